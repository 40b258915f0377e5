# Self-tests of the harness against Dovecot directly (no proxy): they prove the
# fixtures, the mail filler, the raw client, each real client and the fake upstream.
import hashlib
import poplib
import re
import socket

import pytest

import clients
from harness import (USERS, RawPop3, big_message, crlf, direct, lf, message, octets,
                     plain_ir, tricky_messages, unstuff)

ALICE = USERS["alice"]


def sample_messages():
    return [
        message("dots", b"first\n.\n..two dots\n.leading\nlast\n", eol=b"\n"),
        message("crlf", b"line one\r\nline two\r\n".replace(b"\r\n", b"\n"), eol=b"\r\n"),
        message("empty", b""),
        message("8bit", "gr\u00fc\u00dfe \u00e9t\u00e9\n".encode("latin-1") + b"\xff\xfe\n"),
        message("long", b"x" * 5000 + b"\n" + b"." + b"y" * 1200 + b"\n"),
    ]


def test_dovecot_serves_filled_maildir_in_order(dovecot):
    msgs = sample_messages()
    for m in msgs:
        dovecot.deliver("alice", m)
    with RawPop3("127.0.0.1", dovecot.port) as c:
        assert c.greeting.startswith(b"+OK")
        c.login("alice", ALICE)
        st = c.ok("STAT")
        assert st.split()[1] == str(len(msgs)).encode()
        status, listing = c.cmd_multi("LIST")
        sizes = [int(l.split()[1]) for l in listing.split(b"\r\n")[:-2]]
        for i, m in enumerate(msgs, 1):
            status, raw = c.cmd_multi("RETR %d" % i)
            body = unstuff(raw)
            # Dovecot serves the stored bytes with CRLF line ends.
            assert body == crlf(m)
            assert octets(status) == len(body) == sizes[i - 1]
        assert c.cmd("QUIT").startswith(b"+OK")


def test_dovecot_stuffs_dot_lines(dovecot):
    dovecot.deliver("alice", message("dots", b".\n..\n.x\n", eol=b"\n"))
    with RawPop3("127.0.0.1", dovecot.port) as c:
        c.login("alice", ALICE)
        _, raw = c.cmd_multi("RETR 1")
        assert raw.endswith(b"\r\n\r\n..\r\n...\r\n..x\r\n.\r\n")


def test_dovecot_empty_multiline_reply(dovecot):
    with RawPop3("127.0.0.1", dovecot.port) as c:
        c.login("alice", ALICE)
        status, raw = c.cmd_multi("LIST")
        assert status.startswith(b"+OK") and raw == b".\r\n"
        assert c.cmd("NOOP").startswith(b"+OK")


def test_dovecot_apop(dovecot):
    dovecot.deliver("bob", message("apop", b"hi\n"))
    p = poplib.POP3("127.0.0.1", dovecot.port, timeout=10)
    assert b"<" in p.getwelcome()
    p.apop("bob", USERS["bob"])
    assert p.stat()[0] == 1
    p.quit()


def test_dovecot_auth_plain_and_user_with_at(dovecot):
    dovecot.deliver("john@example.com", message("john", b"hi john\n"))
    with RawPop3("127.0.0.1", dovecot.port) as c:
        assert c.cmd("AUTH PLAIN " + plain_ir("john@example.com", USERS["john@example.com"])) \
            .startswith(b"+OK")
        assert c.ok("STAT").startswith(b"+OK 1 ")


def test_dovecot_wrong_password_has_auth_code(dovecot):
    with RawPop3("127.0.0.1", dovecot.port) as c:
        c.ok("USER alice")
        assert c.cmd("PASS nope").startswith(b"-ERR [AUTH]")


def test_dovecot_ipv6(dovecot):
    if not dovecot.v6:
        pytest.skip("no ::1 on this machine")
    with RawPop3("::1", dovecot.port) as c:
        c.login("alice", ALICE)


def test_dovecot_quit_commits_and_drop_does_not(dovecot):
    dovecot.deliver("alice", message("a", b"a\n"))
    dovecot.deliver("alice", message("b", b"b\n"))
    with RawPop3("127.0.0.1", dovecot.port) as c:
        c.login("alice", ALICE)
        c.ok("DELE 1")
    dovecot.wait_log(r"pop3\(alice\).*Disconnected: Connection closed")
    assert dovecot.stored_count("alice") == 2
    with RawPop3("127.0.0.1", dovecot.port) as c:
        c.login("alice", ALICE)
        c.ok("DELE 1")
        assert c.cmd("QUIT").startswith(b"+OK")
    assert dovecot.stored_count("alice") == 1


def test_big_message_raw_and_poplib(dovecot):
    m = big_message(20)
    dovecot.deliver("alice", m)
    with RawPop3("127.0.0.1", dovecot.port) as c:
        c.login("alice", ALICE)
        status, raw = c.cmd_multi("RETR 1")
        assert unstuff(raw) == crlf(m)
        assert octets(status) == len(crlf(m)) >= 20 * 1024 * 1024
    p = poplib.POP3("127.0.0.1", dovecot.port, timeout=10)
    p.user("alice")
    p.pass_(ALICE)
    _, lines, _ = p.retr(1)
    assert hashlib.sha256(b"\r\n".join(lines) + b"\r\n").digest() == hashlib.sha256(crlf(m)).digest()
    p.quit()


@pytest.mark.parametrize("client", ["fetchmail", "mpop", "getmail"])
def test_real_client_direct(client, dovecot, procs, wtmp):
    msgs = sample_messages()
    for m in msgs:
        dovecot.deliver("alice", m)
    run = getattr(clients, client)
    status, got, out = run(procs, wtmp / client, "127.0.0.1", dovecot.port, "alice", ALICE)
    assert status == 0, out[-2000:]
    assert len(got) == len(msgs)
    for g, m in zip(got, msgs):
        # Each client rewrites line ends on delivery; getmail adds Return-Path.
        g = lf(g).replace(b"\r", b"")
        if client == "getmail":
            assert g.startswith(b"Return-Path: ")
            g = g.split(b"\n", 1)[1]
        assert g == lf(m).replace(b"\r", b"")
    assert dovecot.stored_count("alice") == len(msgs)   # keep


def test_real_client_direct_nokeep(dovecot, procs, tmp_path):
    dovecot.deliver("alice", message("gone", b"bye\n"))
    status, got, out = clients.fetchmail(procs, tmp_path, "127.0.0.1", dovecot.port, "alice",
                                         ALICE, keep=False)
    assert status == 0, out[-2000:]
    assert len(got) == 1
    assert dovecot.stored_count("alice") == 0


@pytest.mark.parametrize("sasl_ir", [False, True])
def test_curl_direct(sasl_ir, dovecot, procs, tmp_path):
    m = message("curl", b"hello\n.\n.dot\n")
    dovecot.deliver("alice", m)
    status, data, log = clients.curl(procs, tmp_path, "127.0.0.1", dovecot.port, "alice",
                                     ALICE, 1, sasl_ir=sasl_ir)
    assert status == 0, log[-2000:]
    assert data == crlf(m)   # curl removes the stuffing, keeps CRLF
    # Both forms of AUTH PLAIN are used by the proxy tests: prove curl sends them.
    assert re.search(r"> AUTH PLAIN \S+" if sasl_ir else r"> AUTH PLAIN\r?\n", log), log[-2000:]


def test_fake_upstream_scripting(fake_upstream):
    def script(c):
        c.login()
        c.expect(b"STAT")
        c.send(b"+OK 0 0\r\n")
        c.expect(b"QUIT")
        c.send(b"+OK bye\r\n")
        c.close()
    f = fake_upstream(script)
    with RawPop3("127.0.0.1", f.port) as c:
        assert c.greeting == b"+OK fake ready\r\n"
        c.cmd_multi("CAPA")
        c.login("x", "y")
        assert c.cmd("STAT") == b"+OK 0 0\r\n"
        assert c.cmd("QUIT") == b"+OK bye\r\n"
        assert c.is_closed(2)
    f.wait_finished()
    f.check()
    assert b"QUIT\r\n" in f.conns[0].received


def test_free_port_is_closed():
    from harness import closed_port
    port = closed_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_dovecot_serves_tricky_messages(dovecot):
    """Pins down what Dovecot itself does with each tricky message, so the
    proxy tests know what 'the same as direct' means."""
    msgs = tricky_messages()
    for _, m in msgs:
        dovecot.deliver("alice", m)
    with direct(dovecot) as c:
        for i, (name, m) in enumerate(msgs, 1):
            status, raw = c.cmd_multi("RETR %d" % i)
            if name == "empty-message":
                # Dovecot's quirk: "+OK 0 octets" and then one empty line.
                assert (status, raw) == (b"+OK 0 octets\r\n", b"\r\n.\r\n")
                continue
            if m.endswith(b"\n"):
                assert unstuff(raw) == crlf(m), name
                assert octets(status) == len(crlf(m)), name
            else:
                # The last line gets a CRLF on the wire but not in the count.
                assert unstuff(raw) == crlf(m) + b"\r\n", name
                assert octets(status) == len(crlf(m)), name
