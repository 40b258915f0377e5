# Real POP3 clients (fetchmail, mpop, getmail6, curl) through pop3proxyd:
# each delivers exactly what it delivers when talking to Dovecot directly.
import pytest

import clients
from harness import USERS, crlf, lf, message, tricky_messages

PW = USERS["alice"]


def client_messages():
    # Clients deliver LF text and fetchmail rejects a message that starts
    # with a non-header line; keep to messages all clients accept (every
    # tricky message is checked byte-exact by test_relay.py).
    names = ("dot-lines", "only-dot-line", "8bit", "empty-body", "terminator-lookalike")
    # fetchmail garbles lines over ~8 KB even when talking to Dovecot directly
    # (different junk bytes on each run), so long lines stay under 8 KB here.
    long_lines = message("long", b"x" * 5000 + b"\n." + b"y" * 1200 + b"\n" + b"z" * 8000 + b"\n")
    return [m for n, m in tricky_messages() if n in names] + [long_lines] + [
        message("plain-%d" % i, b"Hello %d\n\nRegards\n" % i) for i in range(5)]


def normalise(data):
    return lf(data).replace(b"\r", b"")


@pytest.mark.parametrize("client", ["fetchmail", "mpop", "getmail"])
def test_client_through_proxy_matches_direct(client, dovecot, proxy, procs, wtmp):
    msgs = client_messages()
    for m in msgs:
        dovecot.deliver("alice", m)
    run = getattr(clients, client)
    st, want, out = run(procs, wtmp / "direct", "127.0.0.1", dovecot.port, "alice", PW)
    assert st == 0 and len(want) == len(msgs), out[-3000:]
    st, got, out = run(procs, wtmp / "proxied", proxy.host, proxy.port,
                       dovecot.route("alice"), PW)
    assert st == 0, out[-3000:]
    assert len(got) == len(msgs), out[-3000:]
    for i, (g, w, m) in enumerate(zip(got, want, msgs)):
        assert g == w, "message %d differs from the direct delivery" % (i + 1)
        assert normalise(m) in normalise(g)            # and it is the message we stored
    assert dovecot.stored_count("alice") == len(msgs)  # keep


@pytest.mark.parametrize("client", ["fetchmail", "mpop", "getmail"])
def test_client_through_proxy_deletes_without_keep(client, dovecot, proxy, procs, wtmp):
    msgs = client_messages()[:4]
    for m in msgs:
        dovecot.deliver("alice", m)
    run = getattr(clients, client)
    st, got, out = run(procs, wtmp, proxy.host, proxy.port, dovecot.route("alice"), PW,
                       keep=False)
    assert st == 0, out[-3000:]
    assert [normalise(m) in normalise(g) for g, m in zip(got, msgs)] == [True] * len(msgs)
    assert dovecot.stored_count("alice") == 0


def test_fetchmail_with_at_routing(dovecot, proxy, procs, wtmp):
    m = message("at", b"routed with @\n")
    dovecot.deliver("john@example.com", m)
    st, got, out = clients.fetchmail(procs, wtmp, proxy.host, proxy.port,
                                     dovecot.route("john@example.com"),
                                     USERS["john@example.com"])
    assert st == 0, out[-3000:]
    assert [normalise(g) for g in got] == [normalise(m)]


@pytest.mark.parametrize("sasl_ir", [False, True], ids=["auth-continuation", "auth-initial"])
def test_curl_through_proxy(sasl_ir, dovecot, proxy, procs, wtmp):
    msgs = [m for n, m in tricky_messages()
            if n in ("dot-lines", "only-dot-line", "long-lines", "8bit", "nul-bytes")]
    for m in msgs:
        dovecot.deliver("alice", m)
    for i, m in enumerate(msgs, 1):
        st, want, log = clients.curl(procs, wtmp / "d", "127.0.0.1", dovecot.port, "alice", PW,
                                     i, sasl_ir=sasl_ir)
        assert st == 0, log[-2000:]
        st, got, log = clients.curl(procs, wtmp / "p", proxy.host, proxy.port,
                                    dovecot.route("alice"), PW, i, sasl_ir=sasl_ir)
        assert st == 0, log[-2000:]
        assert "> AUTH PLAIN" in log       # routed on the SASL authcid
        assert got == want
        assert got == crlf(m)
