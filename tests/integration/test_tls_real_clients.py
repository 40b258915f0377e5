# Real POP3 clients over TLS through pop3proxyd (curl, mpop, fetchmail; POP3S
# and STLS, certificates checked), TLS on the upstream leg too.
import pytest

from harness import USERS, crlf, lf, message, tricky_messages
from tlsutil import (curl_tls, fetchmail_tls, mpop_tls, pki, start_tls_proxy,  # noqa: F401
                     tls_dovecot)

PW = USERS["alice"]


def corpus():
    names = ("dot-lines", "only-dot-line", "8bit", "empty-body", "terminator-lookalike")
    return [m for n, m in tricky_messages() if n in names] + [
        message("tls-plain-%d" % i, b"Hello over TLS %d\n\nRegards\n" % i) for i in range(3)]


def normalise(data):
    return lf(data).replace(b"\r", b"")


@pytest.fixture
def setup(pki, tls_dovecot, proxy_factory):
    msgs = corpus()
    for m in msgs:
        tls_dovecot.deliver("alice", m)
    proxy = start_tls_proxy(proxy_factory, pki, tls_dovecot)
    # Through the proxy, to Dovecot's implicit-TLS port: TLS on both legs.
    user = "alice%%127.0.0.1:%d" % tls_dovecot.tls_port
    return msgs, proxy, user


def check_both_legs_tls(proxy, dovecot):
    log = proxy.log_text()
    assert "TLS with client: TLSv1." in log, log[-3000:]
    assert "certificate verified" in log and "NOT verified" not in log
    assert PW not in log
    dovecot.wait_log(r"Login: user=<alice>")


@pytest.mark.parametrize("client,mode", [
    ("mpop", "pop3s"), ("mpop", "stls"),
    ("fetchmail", "pop3s"), ("fetchmail", "stls")])
def test_client_over_tls_matches_direct(client, mode, setup, pki, tls_dovecot, procs, wtmp):
    msgs, proxy, user = setup
    run = {"mpop": mpop_tls, "fetchmail": fetchmail_tls}[client]
    # fetchmail checks names only (not IP addresses) against the certificate.
    host = "localhost" if client == "fetchmail" else "127.0.0.1"
    starttls = mode == "stls"
    d_port = tls_dovecot.port if starttls else tls_dovecot.tls_port
    p_port = proxy.port if starttls else proxy.tls_port
    st, want, out = run(procs, wtmp / "direct", host, d_port, "alice", PW,
                        pki.ca.pem, starttls)
    assert st == 0 and len(want) == len(msgs), out[-3000:]
    st, got, out = run(procs, wtmp / "proxied", host, p_port, user, PW,
                       pki.ca.pem, starttls)
    assert st == 0, out[-3000:]
    assert len(got) == len(msgs), out[-3000:]
    for i, (g, w, m) in enumerate(zip(got, want, msgs)):
        assert g == w, "message %d differs from the direct delivery" % (i + 1)
        assert normalise(m) in normalise(g)
    check_both_legs_tls(proxy, tls_dovecot)
    assert tls_dovecot.stored_count("alice") == len(msgs)


@pytest.mark.parametrize("mode", ["pop3s", "stls"])
def test_curl_over_tls(mode, setup, pki, tls_dovecot, procs, wtmp):
    msgs, proxy, user = setup
    if mode == "pop3s":
        base, reqd = "pop3s://127.0.0.1:%d" % proxy.tls_port, False
    else:
        base, reqd = "pop3://127.0.0.1:%d" % proxy.port, True
    for i, m in enumerate(msgs, 1):
        st, got, log = curl_tls(procs, wtmp / mode, base, user, PW, i, pki.ca.pem, ssl_reqd=reqd)
        assert st == 0, log[-3000:]
        assert got == crlf(m), "message %d" % i
    check_both_legs_tls(proxy, tls_dovecot)


def test_curl_refuses_proxy_with_unknown_ca(setup, procs, wtmp, pki):
    # The client side is really verified: without our CA curl gives up.
    msgs, proxy, user = setup
    proxy.expect_exit = True      # the exit status is checked below
    st, got, log = curl_tls(procs, wtmp, "pop3s://127.0.0.1:%d" % proxy.tls_port, user, PW, 1,
                            "/dev/null")
    assert st != 0 and not got, log[-2000:]
    assert "certificate" in log, log[-2000:]
    rc, _ = proxy.stop()
    assert rc == 0, "proxy exit status %s after SIGTERM" % rc
