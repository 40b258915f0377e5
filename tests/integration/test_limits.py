# Session limits and hostile clients: session caps, one byte at a time,
# over-long lines, NUL / bare CR / bare LF / 8-bit bytes, wrong-state commands.
import socket
import time

import pytest

from harness import (USERS, crlf, direct, message, plain_ir, unstuff, via,
                     wait_until)

PW = USERS["alice"]


def greeting_of(proxy, source=None):
    """The first line the proxy sends to a new connection ('' if it just closes)."""
    s = socket.create_connection((proxy.host, proxy.port), timeout=5,
                                 source_address=source)
    try:
        data = b""
        while not data.endswith(b"\n"):
            d = s.recv(1024)
            if not d:
                break
            data += d
        return data, s
    except socket.timeout:
        return b"<timeout>", s


def capa_probe(c):
    """Send CAPA and read up to its reply; every reply before it must be a
    single-line -ERR (the hostile lines get no multi-line or +OK answer)."""
    c.send(b"CAPA\r\n")
    before = []
    while True:
        line = c.line()
        if line.startswith(b"+OK"):
            body = c.multi()
            assert b"PIPELINING" in body
            return before
        assert line.startswith(b"-ERR"), (line, before)
        before.append(line)


def login_and_check(c, dovecot, m, user="alice"):
    c.login(dovecot.route(user), dovecot.users[user])
    status, raw = c.cmd_multi("RETR 1")
    assert status.startswith(b"+OK"), status
    assert unstuff(raw) == crlf(m)


# --------------------------------------------------------------------------
# session caps

def test_max_sessions(proxy_factory):
    proxy = proxy_factory(["--max-sessions", "2"])
    a = proxy.connect()
    b = proxy.connect()
    line, s = greeting_of(proxy)
    try:
        assert line.startswith(b"-ERR [SYS/TEMP]"), line
        s.settimeout(5)
        assert s.recv(100) == b"", "not closed after the -ERR"
    finally:
        s.close()
    a.close()

    def slot_free():
        line, s = greeting_of(proxy)
        s.close()
        return line.startswith(b"+OK")
    wait_until(slot_free, 5, what="a free session slot after one session closed")
    b.close()


def test_max_sessions_per_ip(proxy_factory):
    proxy = proxy_factory(["--max-sessions-per-ip", "2"])
    a = proxy.connect()
    b = proxy.connect()
    line, s = greeting_of(proxy)
    s.close()
    assert line.startswith(b"-ERR [SYS/TEMP]"), line
    # Another client address still gets in.
    line, s = greeting_of(proxy, source=("127.0.0.2", 0))
    s.close()
    assert line == b"+OK pop3proxyd ready\r\n"
    # Slots are given back when sessions end.
    a.close()
    b.close()

    def two_fit():
        got = [greeting_of(proxy) for _ in range(2)]
        for _, s in got:
            s.close()
        return all(line.startswith(b"+OK") for line, _ in got)
    wait_until(two_fit, 5, what="two sessions from 127.0.0.1 after the first two ended")


# --------------------------------------------------------------------------
# slow and fragmented clients

def test_one_byte_at_a_time(dovecot, proxy):
    m = message("bytewise", b"sent one byte at a time\n.\n")
    dovecot.deliver("alice", m)
    with direct(dovecot) as d:
        want = d.cmd_multi("RETR 1")
    c = proxy.connect()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def dribble(text):
        for b in (text + "\r\n").encode():
            c.send(bytes([b]))
            time.sleep(0.001)
    try:
        dribble("CAPA")
        assert c.line().startswith(b"+OK") and b"PIPELINING" in c.multi()
        dribble("USER " + dovecot.route("alice"))
        assert c.line().startswith(b"+OK")
        dribble("PASS " + PW)
        assert c.line().startswith(b"+OK")
        dribble("RETR 1")
        got = (c.line(), c.multi())
        assert got == want
        dribble("QUIT")
        assert c.line().startswith(b"+OK")
    finally:
        c.close()


# --------------------------------------------------------------------------
# over-long lines

@pytest.mark.parametrize("size", [256, 1000, 10 * 1024, 100 * 1024],
                         ids=["256", "1k", "10k", "100k"])
def test_long_line_before_login_then_session_goes_on(size, dovecot, proxy):
    m = message("afterlong", b"after a long line\n")
    dovecot.deliver("alice", m)
    with proxy.connect() as c:
        # size counts the whole line, CRLF included: 256 is one over the limit.
        c.send(b"NOOP " + b"x" * (size - 7) + b"\r\n")
        r = c.line()
        assert r == b"-ERR line too long\r\n", r
        # The next command, sent after the -ERR, is answered.
        assert capa_probe(c) == []
        login_and_check(c, dovecot, m)


@pytest.mark.parametrize("size", [300, 10 * 1024], ids=["300", "10k"])
def test_long_line_pipelined_with_next_command(size, dovecot, proxy):
    """The over-long line and the next command arrive in one segment."""
    with proxy.connect() as c:
        c.send(b"NOOP " + b"x" * size + b"\r\nCAPA\r\n")
        assert c.line() == b"-ERR line too long\r\n"
        r = c.line()
        assert r.startswith(b"+OK"), r
        assert b"PIPELINING" in c.multi()


def test_one_megabyte_without_crlf(dovecot, proxy):
    m = message("after1m", b"after a megabyte\n")
    dovecot.deliver("alice", m)
    with proxy.connect(timeout=20) as c:
        c.send(b"A" * (1 << 20))
        c.send(b"\r\n")
        r = c.line()
        assert r.startswith(b"-ERR"), r
        # Only one -ERR for the one long line, then the session answers.
        assert capa_probe(c) == []
        login_and_check(c, dovecot, m)
    # 1 MB without CRLF and then a hang-up: the proxy shrugs it off.
    c = proxy.connect()
    c.send(b"B" * (1 << 20))
    c.close()
    with proxy.connect() as c2:
        login_and_check(c2, dovecot, m)


def test_long_line_after_login(dovecot, proxy):
    m = message("longafter", b"long line after login\n")
    dovecot.deliver("alice", m)
    with via(proxy, dovecot) as c:
        r = c.cmd("NOOP " + "y" * 10000)
        assert r.startswith(b"-ERR"), r
        assert c.ok("STAT").startswith(b"+OK 1 ")
        status, raw = c.cmd_multi("RETR 1")
        assert unstuff(raw) == crlf(m)


@pytest.mark.parametrize("continuation", [False, True], ids=["initial", "continuation"])
def test_long_auth_data_up_to_8k_is_accepted(continuation, dovecot, proxy):
    """AUTH data may be up to 8 KiB (contract): a 5 KB AUTH PLAIN line (long
    password) is routed, not refused as too long."""
    long_pw = "p" * 3800
    dovecot.add_user("longpw", long_pw)
    m = message("longauth", b"long password\n")
    dovecot.deliver("longpw", m)
    blob = plain_ir(dovecot.route("longpw"), long_pw)
    assert 5000 < len(blob) < 8000
    with proxy.connect() as c:
        if continuation:
            assert c.cmd("AUTH PLAIN").startswith(b"+")
            r = c.cmd(blob)
        else:
            r = c.cmd("AUTH PLAIN " + blob)
        assert r.startswith(b"+OK"), r
        status, raw = c.cmd_multi("RETR 1")
        assert unstuff(raw) == crlf(m)


def test_ten_protocol_errors_in_a_row_close_the_session(proxy):
    with proxy.connect() as c:
        errs = 0
        for i in range(10):
            try:
                c.send(b"NOOP " + b"z" * 400 + b"\r\n")
                r = c.line()
            except (EOFError, ConnectionResetError):
                break
            assert r.startswith(b"-ERR"), r
            errs += 1
        assert errs >= 9, "closed after only %d errors" % errs
        assert c.is_closed(5), "still open after 10 protocol errors"


def test_nine_errors_then_a_good_command_keep_the_session(proxy):
    with proxy.connect() as c:
        for _ in range(2):
            for i in range(9):
                c.send(b"NOOP " + b"z" * 400 + b"\r\n")
                assert c.line().startswith(b"-ERR")
            assert capa_probe(c) == []


# --------------------------------------------------------------------------
# bytes that are not POP3

HOSTILE_BEFORE_LOGIN = {
    "nul": b"NO\0OP\r\n",
    "nul-only": b"\0\0\0\r\n",
    "bare-cr": b"NOOP\rSTAT\r\n",
    "bare-lf": b"NOOP\nSTAT\r\n",
    "8bit": b"\xff\xfe\xfd\x80\r\n",
    "utf8-verb": "N\u00d6\u00d6P\r\n".encode(),
    "empty-line": b"\r\n",
    "spaces": b"     \r\n",
    "format-string": b"%s%n%x%s%s%n %n%n\r\n",
    "telnet-iac": b"\xff\xf4\xff\xfd\x06\r\n",
    "tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32 + b"\r\n",
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BEFORE_LOGIN))
def test_hostile_bytes_before_login(name, dovecot, proxy):
    m = message("hostile", b"still fine\n")
    dovecot.deliver("alice", m)
    with proxy.connect() as c:
        c.send(HOSTILE_BEFORE_LOGIN[name])
        errors = capa_probe(c)
        assert len(errors) <= 4
        login_and_check(c, dovecot, m)


@pytest.mark.parametrize("line", [
    b"NO\0OP", b"\xff\xfe\xfd", b"STAT\rNOOP", b"%s%n%x%n", b"RETR \0", b"TOP 1 \xff",
    b"LIST 1\x00", b"UIDL -1", b"RETR 99999999999999999999", b"DELE 0",
], ids=["nul", "8bit", "bare-cr", "format", "retr-nul", "top-8bit", "list-nul", "uidl-neg",
        "retr-huge", "dele-0"])
def test_hostile_bytes_after_login(line, dovecot, proxy):
    m = message("hostile2", b"still fine after login\n")
    dovecot.deliver("alice", m)
    size = len(crlf(m))
    with via(proxy, dovecot) as c:
        c.send(line + b"\r\nSTAT\r\n")
        # Replies until the STAT reply; the hostile line gets one (-ERR most likely).
        seen = []
        while True:
            r = c.line()
            if r == b"+OK 1 %d\r\n" % size:
                break
            seen.append(r)
            assert len(seen) <= 2, seen
        status, raw = c.cmd_multi("RETR 1")
        assert unstuff(raw) == crlf(m)
        assert c.cmd("QUIT").startswith(b"+OK")
    assert dovecot.stored_count("alice") == 1


def test_bare_lf_line_ends_after_login(dovecot, proxy):
    m = message("lf", b"lf client\n")
    dovecot.deliver("alice", m)
    with via(proxy, dovecot) as c:
        c.send(b"NOOP\nSTAT\r\n")
        seen = [c.line()]
        while not seen[-1].startswith(b"+OK 1 "):
            seen.append(c.line())
            assert len(seen) <= 2, seen
        status, raw = c.cmd_multi("RETR 1")
        assert unstuff(raw) == crlf(m)


WRONG_STATE = ["STAT", "LIST", "RETR 1", "DELE 1", "UIDL", "TOP 1 1", "RSET", "NOOP",
               "PASS secret", "APOP alice 0123456789abcdef0123456789abcdef", "STLS", "LAST",
               "XYZZY", "QUIT now please"]


def test_wrong_state_commands_before_login(dovecot, proxy):
    m = message("state", b"state machine\n")
    dovecot.deliver("alice", m)
    with proxy.connect() as c:
        for i, cmd in enumerate(WRONG_STATE):
            r = c.cmd(cmd)
            if cmd.startswith("QUIT"):
                # QUIT with an argument: -ERR, or an ordinary QUIT.
                if r.startswith(b"+OK"):
                    assert c.is_closed(5)
                    return
            assert r.startswith(b"-ERR"), (cmd, r)
            if i % 4 == 3:
                assert capa_probe(c) == []     # reset any "errors in a row" count
        login_and_check(c, dovecot, m)


def test_wrong_state_commands_after_login(dovecot, proxy):
    m = message("state2", b"state machine after login\n")
    dovecot.deliver("alice", m)
    with via(proxy, dovecot) as c:
        for cmd in ["USER alice", "PASS x", "APOP a b", "AUTH PLAIN", "STLS",
                    "USER " + dovecot.route("bob")]:
            r = c.cmd(cmd)
            assert r.startswith(b"-ERR"), (cmd, r)
        status, raw = c.cmd_multi("RETR 1")
        assert unstuff(raw) == crlf(m)
    # Still alice's mailbox and nobody else was logged in.
    assert "user=<bob>" not in dovecot.log_text()


def test_hostile_user_names_are_not_interpreted(dovecot, proxy, fake_upstream):
    """Format strings and shell syntax in the routed name reach the server
    exactly as sent (and the log shows them literally), crashing nothing."""
    def script(conn):
        conn.login(pass_reply=b"-ERR [AUTH] no\r\n")
        conn.drain(5)
    fake = fake_upstream(script)
    there = "127.0.0.1:%d" % fake.port
    names = ["%s%n%x%s", "${HOME}$(id)`id`", "%n%n%n@x", "\\x00\\n%%"]
    for name in names:
        with proxy.connect() as c:
            r = c.cmd("USER %s%%%s" % (name, there))
            assert r.startswith(b"+OK"), (name, r)
            assert c.cmd("PASS x") == b"-ERR [AUTH] no\r\n"
    fake.wait_conns(len(names))
    sent = b"".join(conn.received for conn in fake.conns)
    for name in names:
        assert b"USER " + name.encode() + b"\r\n" in sent, name
    assert proxy.alive()
    assert "%s%n%x%s" in proxy.log_text()
    with via(proxy, dovecot) as c:
        assert c.ok("STAT")
