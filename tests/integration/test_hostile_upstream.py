# A scripted, misbehaving upstream: silence, garbage, over-long lines, NULs,
# a close or a stall in the middle of RETR. The proxy must neither crash nor wedge.
import socket
import time

import pytest

from harness import RawPop3

TIMEOUT_FLAGS = ["--upstream-timeout", "1", "--connect-timeout", "2"]


def route(fake, user="x"):
    return "%s%%127.0.0.1:%d" % (user, fake.port)


def login_via(proxy, fake):
    c = proxy.connect(timeout=10)
    c.login(route(fake), "pw")
    return c


def assert_no_quit(fake):
    for conn in fake.conns:
        assert b"QUIT" not in conn.received.upper(), conn.received[-200:]


def assert_proxy_serves(proxy):
    with proxy.connect() as c:
        assert c.greeting == b"+OK pop3proxyd ready\r\n"
        assert c.cmd_multi("CAPA")[0].startswith(b"+OK")


# --------------------------------------------------------------------------
# before login (routing mode: the proxy reads the greeting itself)

def _silent(conn):
    conn.drain(15)


def _garbage(data):
    def script(conn):
        conn.send(data)
        conn.drain(10)
    return script


def _close_at_once(conn):
    conn.close()


def _partial_greeting(conn):
    conn.send(b"+OK this greeting never ends")
    conn.drain(15)


BAD_GREETINGS = {
    "silence": _silent,
    "http": _garbage(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
    "binary": _garbage(b"\x00\xff\xfe\x16\x03\x01\x00\x00garbage\r\n"),
    "nul-in-greeting": _garbage(b"+OK hello\0world\r\n"),
    "err-greeting": _garbage(b"-ERR [SYS/TEMP] go away\r\n"),
    "over-long-greeting": _garbage(b"+OK " + b"A" * 100000 + b"\r\n"),
    "endless-greeting": _garbage(b"+OK " + b"B" * (2 << 20)),
    "partial-greeting": _partial_greeting,
    "close-at-once": _close_at_once,
}


@pytest.mark.parametrize("name", sorted(BAD_GREETINGS))
def test_bad_upstream_greeting(name, proxy_factory, fake_upstream):
    fake = fake_upstream(BAD_GREETINGS[name])
    proxy = proxy_factory(TIMEOUT_FLAGS)
    with proxy.connect(timeout=10) as c:
        t = time.monotonic()
        try:
            r = c.cmd("USER " + route(fake))
        except EOFError:
            r = b"<closed>"
        took = time.monotonic() - t
        # An -ERR (the client may retry later) or, at worst, a close - quickly.
        assert r.startswith(b"-ERR") or r == b"<closed>", r
        assert took < 5, took
    fake.wait_conns(1)
    assert_no_quit(fake)
    assert_proxy_serves(proxy)


def test_bad_greeting_is_sys_temp(proxy_factory, fake_upstream):
    fake = fake_upstream(BAD_GREETINGS["silence"])
    proxy = proxy_factory(TIMEOUT_FLAGS)
    with proxy.connect(timeout=10) as c:
        r = c.cmd("USER " + route(fake))
        assert r.startswith(b"-ERR [SYS/TEMP]"), r


def test_upstream_closes_after_user(proxy_factory, fake_upstream):
    def script(conn):
        conn.send(b"+OK hi\r\n")
        while True:
            l = conn.line()
            if l is None or l.upper().startswith(b"USER"):
                break
            if l.upper().startswith(b"CAPA"):
                conn.send(b"+OK\r\nUSER\r\n.\r\n")
        conn.close()
    fake = fake_upstream(script)
    proxy = proxy_factory(TIMEOUT_FLAGS)
    with proxy.connect() as c:
        try:
            r = c.cmd("USER " + route(fake))
        except EOFError:
            r = b"<closed>"
        assert r.startswith(b"-ERR") or r == b"<closed>", r
    assert_proxy_serves(proxy)


def test_over_long_reply_to_pass(proxy_factory, fake_upstream):
    def script(conn):
        conn.login(pass_reply=b"-ERR " + b"Z" * 200000 + b"\r\n")
        conn.drain(10)
    fake = fake_upstream(script)
    proxy = proxy_factory(TIMEOUT_FLAGS)
    with proxy.connect() as c:
        c.ok("USER " + route(fake))
        try:
            r = c.cmd("PASS pw")
        except EOFError:
            r = b"<closed>"
        # Relayed, cut, or refused: never a success, never a hang.
        assert not r.startswith(b"+OK"), r[:100]
    assert_proxy_serves(proxy)


# --------------------------------------------------------------------------
# after login (relay)

def _serve(after_login):
    def script(conn):
        conn.login()
        after_login(conn)
    return script


def test_close_in_the_middle_of_retr(proxy_factory, fake_upstream):
    partial = b"Subject: cut\r\n\r\n" + b"line of the message\r\n" * 40

    def rest(conn):
        conn.expect(b"RETR 1")
        conn.send(b"+OK 2000 octets\r\n" + partial)
        time.sleep(0.2)
        conn.close()
    fake = fake_upstream(_serve(rest))
    proxy = proxy_factory(TIMEOUT_FLAGS)
    c = login_via(proxy, fake)
    try:
        c.send(b"RETR 1\r\n")
        data = bytearray()
        closed = False
        deadline = time.monotonic() + 5
        c.sock.settimeout(5)
        while time.monotonic() < deadline:
            d = c.sock.recv(65536)
            if not d:
                closed = True
                break
            data += d
        assert closed, "client not disconnected after the server vanished mid-RETR"
        # The truncated message must not be made to look complete.
        assert not data.endswith(b"\r\n.\r\n"), data[-40:]
        assert partial.startswith(bytes(data[len(b"+OK 2000 octets\r\n"):])) or \
            data.startswith(b"-ERR"), data[:80]
    finally:
        c.close()
    assert_proxy_serves(proxy)


def test_silence_in_the_middle_of_retr(proxy_factory, fake_upstream):
    def rest(conn):
        conn.expect(b"RETR 1")
        conn.send(b"+OK 5000 octets\r\nSubject: stalled\r\n\r\nfirst line\r\n")
        conn.drain(15)
    fake = fake_upstream(_serve(rest))
    proxy = proxy_factory(TIMEOUT_FLAGS)
    c = login_via(proxy, fake)
    try:
        c.send(b"RETR 1\r\n")
        t = time.monotonic()
        assert c.is_closed(6), "client not disconnected after the upstream timeout"
        took = time.monotonic() - t
        assert 0.8 < took < 5, took
        assert not bytes(c.after_close_data).endswith(b"\r\n.\r\n")
    finally:
        c.close()
    fake.wait_finished(1)
    assert fake.conns[0].peer_closed, "the proxy left the upstream connection open"
    assert_no_quit(fake)
    assert_proxy_serves(proxy)


def test_silence_instead_of_a_reply(proxy_factory, fake_upstream):
    def rest(conn):
        conn.expect(b"DELE 1")
        conn.send(b"+OK deleted\r\n")
        conn.expect(b"STAT")
        conn.drain(15)           # no answer
    fake = fake_upstream(_serve(rest))
    proxy = proxy_factory(TIMEOUT_FLAGS)
    c = login_via(proxy, fake)
    try:
        c.ok("DELE 1")
        c.send(b"STAT\r\n")
        assert c.is_closed(6), "client not disconnected after the upstream timeout"
    finally:
        c.close()
    fake.wait_finished(1)
    assert fake.conns[0].peer_closed, "the proxy left the upstream connection open"
    assert_no_quit(fake)


def test_over_long_reply_line_after_login(proxy_factory, fake_upstream):
    def rest(conn):
        conn.expect(b"STAT")
        conn.send(b"+OK " + b"9" * (1 << 20) + b"\r\n")
        l = conn.line(5)
        if l is not None and l.upper().startswith(b"NOOP"):
            conn.send(b"+OK still here\r\n")
        conn.drain(10)
    fake = fake_upstream(_serve(rest))
    proxy = proxy_factory(TIMEOUT_FLAGS)
    c = login_via(proxy, fake)
    try:
        c.send(b"STAT\r\n")
        # Either relayed whole, or the session is closed: no hang, no crash.
        try:
            first = c.line()
            assert first.startswith(b"+OK 999") or first.startswith(b"-ERR"), first[:50]
            r = c.cmd("NOOP")
            assert r in (b"+OK still here\r\n",) or r.startswith(b"-ERR"), r
        except (EOFError, ConnectionResetError):
            pass
    finally:
        c.close()
    assert_proxy_serves(proxy)


def relays_retr_exactly(proxy_factory, fake_upstream, reply, send):
    """The fake answers RETR 1 with reply (via send(conn, reply)); the client
    must get exactly those bytes, and the session goes on to QUIT."""
    def rest(conn):
        conn.expect(b"RETR 1")
        send(conn, reply)
        conn.expect(b"QUIT")
        conn.send(b"+OK bye\r\n")
        conn.close()
    fake = fake_upstream(_serve(rest))
    proxy = proxy_factory(TIMEOUT_FLAGS)
    with login_via(proxy, fake) as c:
        status, raw = c.cmd_multi("RETR 1")
        assert status + raw == reply
        assert c.cmd("QUIT") == b"+OK bye\r\n"
    fake.wait_finished(1)
    fake.check()


def test_binary_multiline_reply_relayed_exactly(proxy_factory, fake_upstream):
    reply = (b"+OK 3 octets\r\n" b"a\0b\xff\xfe\r\n" b"..dot\r\n" b"+OK not a status\r\n"
             b"\r\n" b"-ERR not one either\r\n" b".\r\n")
    relays_retr_exactly(proxy_factory, fake_upstream, reply, lambda conn, r: conn.send(r))


def test_reply_dribbled_one_byte_at_a_time(proxy_factory, fake_upstream):
    reply = b"+OK 120 octets\r\nSubject: slow\r\n\r\n" + b"..a line\r\n" * 10 + b".\r\n"

    def dribble(conn, r):
        for i in range(len(r)):
            conn.send(r[i:i + 1])
            time.sleep(0.002)
    relays_retr_exactly(proxy_factory, fake_upstream, reply, dribble)


def test_post_login_capa_filtered(proxy_factory, fake_upstream):
    caps = (b"TOP\r\nUIDL\r\nSTLS\r\nSASL PLAIN LOGIN\r\nUSER\r\nX-WEIRD-CAP\r\n"
            b"PIPELINING\r\nRESP-CODES\r\n")

    def rest(conn):
        conn.expect(b"CAPA")
        conn.send(b"+OK here\r\n" + caps + b".\r\n")
        conn.drain(5)
    fake = fake_upstream(_serve(rest))
    proxy = proxy_factory(TIMEOUT_FLAGS)
    with login_via(proxy, fake) as c:
        status, body = c.cmd_multi("CAPA")
    names = {l.split()[0] for l in body.split(b"\r\n")[:-2] if l}
    assert {b"TOP", b"UIDL", b"PIPELINING", b"RESP-CODES"} <= names, body
    assert not names & {b"STLS", b"SASL", b"USER", b"X-WEIRD-CAP"}, body


# --------------------------------------------------------------------------
# fixed-upstream mode: the greeting is the server's

def test_fixed_upstream_silent_greeting(proxy_factory, fake_upstream):
    fake = fake_upstream(_silent)
    proxy = proxy_factory(["--upstream", fake.addr] + TIMEOUT_FLAGS, allow=())
    t = time.monotonic()
    try:
        c = RawPop3(proxy.host, proxy.port, timeout=6)
        line = c.greeting
        closed = line.startswith(b"-ERR") and c.is_closed(5)
        c.close()
    except (EOFError, ConnectionResetError):
        line, closed = b"<closed>", True
    took = time.monotonic() - t
    assert closed and took < 5, (line, took)
    assert line.startswith(b"-ERR") or line == b"<closed>", line
    assert_no_quit(fake)


@pytest.mark.parametrize("capa_reply", [b"+OK\r\nTOP\r\nUIDL\r\n.\r\n", b"-ERR what?\r\n"],
                         ids=["capa", "no-capa"])
def test_fixed_upstream_relays_greeting_and_binary(capa_reply, proxy_factory, fake_upstream):
    def script(conn):
        conn.send(b"+OK fake server <123.456@fake>\r\n")
        l = conn.line()
        if l.upper().startswith(b"CAPA"):     # the proxy may probe: an RFC 1939 server says -ERR
            conn.send(capa_reply)
            l = conn.line()
        assert l.startswith(b"APOP bob "), l
        conn.send(b"+OK apop fine\r\n")
        conn.expect(b"TOP 1 0")
        conn.send(b"+OK\r\nX-Bin: \x00\xff\r\n\r\n.\r\n")
        conn.expect(b"QUIT")
        conn.send(b"+OK bye\r\n")
    fake = fake_upstream(script)
    proxy = proxy_factory(["--upstream", fake.addr] + TIMEOUT_FLAGS, allow=())
    with RawPop3(proxy.host, proxy.port) as c:
        assert c.greeting == b"+OK fake server <123.456@fake>\r\n"
        assert c.cmd("APOP bob 0123456789abcdef0123456789abcdef") == b"+OK apop fine\r\n"
        assert c.cmd_multi("TOP 1 0") == (b"+OK\r\n", b"X-Bin: \x00\xff\r\n\r\n.\r\n")
        assert c.cmd("QUIT") == b"+OK bye\r\n"
    fake.wait_finished(1)
    fake.check()


def test_fixed_upstream_commands_sent_before_the_greeting_wait(proxy_factory, fake_upstream):
    """A client that pipelines before it has the greeting: its commands wait
    until the proxy has asked the server's CAPA and relayed the greeting, so
    they reach the server after the proxy's CAPA and get their own replies
    (found by fuzz_session: they used to go first, or to stall, and a reply
    could be taken for a command not yet sent)."""
    def script(conn):
        conn.send(b"+OK fake <1.2@fake>\r\n")
        time.sleep(0.3)                             # the client writes first
        conn.expect(b"CAPA")                        # the proxy's own
        conn.send(b"+OK\r\nUIDL\r\nPIPELINING\r\n.\r\n")
        conn.expect(b"CAPA")                        # the client's
        conn.send(b"+OK\r\nTOP\r\n.\r\n")
        conn.expect(b"USER bob")
        conn.send(b"+OK bob\r\n")
        conn.expect(b"QUIT")
        conn.send(b"+OK bye\r\n")
    fake = fake_upstream(script)
    proxy = proxy_factory(["--upstream", fake.addr] + TIMEOUT_FLAGS, allow=())
    s = socket.create_connection((proxy.host, proxy.port), timeout=5)
    s.sendall(b"CAPA\r\nUSER bob\r\nQUIT\r\n")     # before any greeting
    got = b""
    while got.count(b"\r\n") < 6:
        d = s.recv(4096)
        if not d:
            break
        got += d
    s.close()
    assert got.startswith(b"+OK fake <1.2@fake>\r\n"), got
    assert b"+OK\r\nTOP\r\n" in got and b"UIDL" not in got, got
    assert got.endswith(b"+OK bob\r\n+OK bye\r\n"), got
    fake.wait_finished(1)
    fake.check()


# --------------------------------------------------------------------------
# the server's own refusals pass through unchanged

@pytest.mark.parametrize("reply", [b"-ERR [IN-USE] mailbox locked by another session\r\n",
                                   b"-ERR [LOGIN-DELAY] wait 900 seconds\r\n",
                                   b"-ERR [SYS/TEMP] try later\r\n"],
                         ids=["in-use", "login-delay", "sys-temp"])
def test_pass_refusal_with_response_code_relayed(reply, proxy_factory, fake_upstream):
    fake = fake_upstream(lambda conn: (conn.login(pass_reply=reply), conn.drain(5)))
    proxy = proxy_factory(TIMEOUT_FLAGS)
    with proxy.connect() as c:
        c.ok("USER " + route(fake))
        assert c.cmd("PASS pw") == reply


def test_user_refusal_relayed(proxy_factory, fake_upstream):
    def script(conn):
        conn.send(b"+OK hi\r\n")
        while True:
            l = conn.line()
            if l is None:
                return
            if l.upper().startswith(b"CAPA"):
                conn.send(b"+OK\r\nUSER\r\n.\r\n")
            elif l.upper().startswith(b"USER"):
                conn.send(b"-ERR [AUTH] no such user here\r\n")
    fake = fake_upstream(script)
    proxy = proxy_factory(TIMEOUT_FLAGS)
    with proxy.connect() as c:
        assert c.cmd("USER " + route(fake)) == b"-ERR [AUTH] no such user here\r\n"
