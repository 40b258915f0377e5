# Relaying through pop3proxyd (routing mode and fixed upstream) compared byte
# for byte with the same session straight to Dovecot; pipelining; concurrency.
import hashlib
import poplib
import re
import socket
import threading
import time

import pytest

from harness import (USERS, big_message, crlf, direct, message, octets, plain_ir,
                     read_replies, transcript, tricky_messages, unstuff, via)


def retr_all_raw(conn, n):
    return [conn.cmd_multi("RETR %d" % i) for i in range(1, n + 1)]


def list_sizes(conn):
    status, body = conn.cmd_multi("LIST")
    assert status.startswith(b"+OK"), status
    return {int(a): int(b) for a, b in (l.split() for l in body.split(b"\r\n")[:-2])}


def poplib_login(host, port, user, password):
    p = poplib.POP3(host, port, timeout=20)
    p.user(user)
    p.pass_(password)
    return p


# --------------------------------------------------------------------------
# greeting and byte identity

def test_greeting_and_capa_before_login(proxy):
    with proxy.connect() as c:
        assert c.greeting == b"+OK pop3proxyd ready\r\n"
        status, body = c.cmd_multi("CAPA")
        assert status.startswith(b"+OK"), status
        caps = body.split(b"\r\n")[:-2]
        names = {l.split()[0].upper() for l in caps if l}
        for want in (b"USER", b"SASL", b"PIPELINING", b"TOP", b"UIDL", b"RESP-CODES",
                     b"AUTH-RESP-CODE", b"IMPLEMENTATION"):
            assert want in names, (want, caps)
        sasl = [l for l in caps if l.upper().startswith(b"SASL")]
        assert b"PLAIN" in sasl[0].upper().split()


def test_retr_byte_identical_tricky_messages(dovecot, proxy):
    msgs = tricky_messages()
    for _, m in msgs:
        dovecot.deliver("alice", m)
    with direct(dovecot) as d:
        want = retr_all_raw(d, len(msgs))
    with via(proxy, dovecot) as c:
        sizes = list_sizes(c)
        got = retr_all_raw(c, len(msgs))
        assert c.cmd("QUIT").startswith(b"+OK")
    for i, ((name, m), (ws, wb), (gs, gb)) in enumerate(zip(msgs, want, got), 1):
        assert gs == ws, name
        assert gb == wb, "%s: RETR %d differs from direct" % (name, i)
        # The test data really is what we meant: Dovecot stuffed and served it.
        if m.endswith(b"\n"):
            assert unstuff(gb) == crlf(m), name
        assert octets(gs) == sizes[i], name


def test_retr_byte_identical_with_poplib(dovecot, proxy, monkeypatch):
    # poplib refuses lines over 2048 octets unless told otherwise.
    monkeypatch.setattr(poplib, "_MAXLINE", 1 << 20)
    msgs = tricky_messages()
    for _, m in msgs:
        dovecot.deliver("alice", m)
    d = poplib_login("127.0.0.1", dovecot.port, "alice", USERS["alice"])
    p = poplib_login(proxy.host, proxy.port, dovecot.route("alice"), USERS["alice"])
    try:
        assert p.stat() == d.stat()
        assert p.list() == d.list()
        for i, (name, _) in enumerate(msgs, 1):
            assert p.retr(i) == d.retr(i), name
    finally:
        p.quit()
        d.quit()


def test_retr_20mb_message(dovecot, proxy):
    m = big_message(20)
    dovecot.deliver("alice", m)
    dovecot.deliver("alice", message("after-big", b"small one after the big one\n"))
    with direct(dovecot) as d:
        ws, wb = d.cmd_multi("RETR 1")
    with via(proxy, dovecot) as c:
        t = time.monotonic()
        gs, gb = c.cmd_multi("RETR 1")
        took = time.monotonic() - t
        # The session goes on in step after 20 MB.
        s2, b2 = c.cmd_multi("RETR 2")
        assert c.cmd("QUIT").startswith(b"+OK")
    assert gs == ws and octets(gs) >= 20 * 1024 * 1024
    assert len(gb) == len(wb)
    assert hashlib.sha256(gb).hexdigest() == hashlib.sha256(wb).hexdigest()
    assert unstuff(b2) == crlf(message("after-big", b"small one after the big one\n"))
    assert took < 30, "20 MB took %.1fs through the proxy" % took
    # And with poplib, which unstuffs and splits lines itself.
    p = poplib_login(proxy.host, proxy.port, dovecot.route("alice"), USERS["alice"])
    try:
        resp, lines, n = p.retr(1)
        assert resp == ws.rstrip(b"\r\n")
        assert hashlib.sha256(b"\r\n".join(lines) + b"\r\n").digest() == \
            hashlib.sha256(crlf(m)).digest()
    finally:
        p.quit()


# --------------------------------------------------------------------------
# the other commands

RFC2449_CAPS = {b"TOP", b"USER", b"SASL", b"RESP-CODES", b"LOGIN-DELAY", b"PIPELINING",
                b"EXPIRE", b"UIDL", b"IMPLEMENTATION", b"AUTH-RESP-CODE"}

COMMANDS = ["STAT", "LIST", "LIST 2", "LIST 9", "UIDL", "UIDL 1", "UIDL 0", "TOP 1 0",
            "TOP 2 2", "TOP 3 100", "NOOP", "RETR 3", "DELE 2", "STAT", "LIST", "UIDL",
            "RETR 2", "DELE 2", "RSET", "STAT", "LIST", "UIDL", "TOP 9 1", "NOOP",
            "XYZZY", "RETR"]


def test_commands_match_direct(dovecot, proxy):
    for i in range(3):
        dovecot.deliver("alice", message("cmd%d" % i, b"line\n" * (i * 3 + 1)
                                         + b".dotted\n" + b"tail %d\n" % i))
    with direct(dovecot) as d:
        want = transcript(d, COMMANDS)
    # The direct session ended without QUIT: nothing was deleted.
    dovecot.wait_log(r"pop3\(alice\).*Disconnected", 1)
    with via(proxy, dovecot) as c:
        got = transcript(c, COMMANDS)
        assert c.cmd("QUIT").startswith(b"+OK")
    for cmd, w, g in zip(COMMANDS, want, got):
        assert g == w, cmd
    assert dovecot.stored_count("alice") == 3      # RSET undid the DELE


def test_capa_after_login_is_the_servers(dovecot, proxy):
    with direct(dovecot) as d:
        ds, db = d.cmd_multi("CAPA")
    with via(proxy, dovecot) as c:
        ps, pb = c.cmd_multi("CAPA")
    assert ps.startswith(b"+OK")
    dcaps = set(db.split(b"\r\n")[:-2])
    pcaps = set(pb.split(b"\r\n")[:-2])
    # Dovecot's post-login list has nothing the proxy must remove but its
    # non-standard "CAPA"; every RFC 2449 capability it lists is kept as is.
    assert not {l for l in dcaps if l.split()[0] in (b"STLS", b"SASL", b"USER")}
    assert pcaps <= dcaps
    assert {l for l in dcaps if l.split()[0] in RFC2449_CAPS} <= pcaps


def test_dele_then_quit_deletes(dovecot, proxy):
    for i in range(3):
        dovecot.deliver("alice", message("del%d" % i, b"x\n"))
    with via(proxy, dovecot) as c:
        c.ok("DELE 1")
        c.ok("DELE 3")
        r = c.cmd("QUIT")
        assert r.startswith(b"+OK"), r
        assert c.is_closed(5), "proxy kept the connection open after QUIT"
    assert dovecot.stored_count("alice") == 1
    with direct(dovecot) as d:
        assert d.ok("STAT").startswith(b"+OK 1 ")
        _, body = d.cmd_multi("TOP 1 0")
        assert b"Subject: del1\r\n" in body


@pytest.mark.parametrize("how", ["close", "reset", "shutdown-write"])
def test_dele_then_dropped_connection_deletes_nothing(how, dovecot, proxy):
    for i in range(2):
        dovecot.deliver("alice", message("keep%d" % i, b"x\n"))
    c = via(proxy, dovecot)
    c.ok("DELE 1")
    c.ok("DELE 2")
    if how == "reset":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    elif how == "shutdown-write":
        c.sock.shutdown(socket.SHUT_WR)
        assert c.is_closed(5), "proxy did not close after the client's EOF"
    c.close()
    # Wait for Dovecot to end that session, then look at how it ended.
    dovecot.wait_log(r"pop3\(alice\).*Disconnected", 1)
    ends = re.findall(r"pop3\(alice\).*Disconnected: ([^\n]*)", dovecot.log_text())
    assert not any(e.startswith("Logged out") for e in ends), \
        "upstream got QUIT from the proxy: %s" % ends
    assert dovecot.stored_count("alice") == 2
    with direct(dovecot) as d:
        assert d.ok("STAT").startswith(b"+OK 2 ")


# --------------------------------------------------------------------------
# pipelining

def pipeline_commands(n_msgs):
    cmds = []
    kinds = ["NOOP", "STAT", "LIST {i}", "UIDL {i}", "RETR {i}", "TOP {i} 1", "LIST",
             "UIDL", "LIST 99", "RETR 99"]
    k = 0
    while len(cmds) < 100:
        i = k % n_msgs + 1
        cmds.append(kinds[k % len(kinds)].format(i=i))
        k += 1
    return cmds


def test_100_pipelined_commands_in_one_write(dovecot, proxy):
    for i in range(5):
        dovecot.deliver("alice", message("pipe%d" % i, (b"line %d\n" % i) * (50 * i + 1)
                                         + b".\n"))
    cmds = pipeline_commands(5)
    batch = b"".join(c.encode() + b"\r\n" for c in cmds)
    with direct(dovecot) as d:
        d.send(batch)
        want = read_replies(d, cmds)
    with via(proxy, dovecot) as c:
        c.send(batch)
        got = read_replies(c, cmds)
        # Nothing extra arrives after the 100 replies.
        assert c.cmd("NOOP").startswith(b"+OK")
    assert len(got) == 100
    for i, (cmd, w, g) in enumerate(zip(cmds, want, got)):
        assert g == w, "reply %d to %r out of order or altered" % (i, cmd)


def test_login_pipelined_with_commands(dovecot, proxy):
    """PIPELINING is offered before login, so USER/PASS/STAT in one write work."""
    dovecot.deliver("alice", message("pl", b"pipelined login\n"))
    with proxy.connect() as c:
        c.send(("USER %s\r\nPASS %s\r\nSTAT\r\nRETR 1\r\nQUIT\r\n" % (
            dovecot.route("alice"), USERS["alice"])).encode())
        replies = read_replies(c, ["USER", "PASS", "STAT", "RETR 1", "QUIT"])
    assert [r[0][:3] for r in replies] == [b"+OK"] * 5, replies
    assert replies[2][0].startswith(b"+OK 1 ")
    assert unstuff(replies[3][1]) == crlf(message("pl", b"pipelined login\n"))


# --------------------------------------------------------------------------
# concurrency

def test_200_concurrent_sessions(dovecot, proxy_factory):
    proxy = proxy_factory(["--max-sessions-per-ip", "0", "--max-sessions", "1000"])
    users = ["u%02d" % i for i in range(20)]
    expect = {}
    for u in users:
        dovecot.add_user(u, "pw-" + u)
        for j in range(3):
            m = message("%s-%d" % (u, j), (b"%s message %d\n" % (u.encode(), j)) * (j * 40 + 1)
                        + b".\n")
            dovecot.deliver(u, m)
            expect[(u, j + 1)] = crlf(m)
    n = 200
    start = threading.Barrier(n, timeout=120)
    errors = []
    done = []

    def worker(k):
        u = users[k % len(users)]
        c = None
        try:
            c = proxy.connect(timeout=60)
            c.login(dovecot.route(u), "pw-" + u)
            start.wait()       # all 200 logged in at the same time
            assert c.ok("STAT").startswith(b"+OK 3 ")
            for j in (1, 2, 3):
                status, raw = c.cmd_multi("RETR %d" % j)
                assert status.startswith(b"+OK"), status
                assert unstuff(raw) == expect[(u, j)], (u, j)
            assert c.cmd("QUIT").startswith(b"+OK")
            done.append(k)
        except Exception as e:
            errors.append("session %d (%s): %r" % (k, u, e))
            start.abort()
        finally:
            if c:
                c.close()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(150)
    took = time.monotonic() - t
    assert not errors, "%d failed, first: %s" % (len(errors), errors[:3])
    assert len(done) == n
    assert took < 120, took


# --------------------------------------------------------------------------
# fixed-upstream (transparent) mode

def test_fixed_upstream_apop(dovecot, proxy_factory):
    proxy = proxy_factory(["--upstream", "127.0.0.1:%d" % dovecot.port], allow=())
    m = message("apop", b"via apop\n.\n")
    dovecot.deliver("bob", m)
    p = poplib.POP3(proxy.host, proxy.port, timeout=20)
    try:
        # The server's own greeting, with its APOP timestamp, is relayed.
        assert re.match(rb"\+OK Dovecot.*<[^>]+@[^>]+>", p.getwelcome()), p.getwelcome()
        p.apop("bob", USERS["bob"])
        assert p.stat()[0] == 1
        _, lines, _ = p.retr(1)
        assert b"\r\n".join(lines) + b"\r\n" == crlf(m)
    finally:
        p.quit()


def test_fixed_upstream_user_pass_and_auth(dovecot, proxy_factory):
    # The daemon refuses --allow-upstream together with --upstream.
    proxy = proxy_factory(["--upstream", "127.0.0.1:%d" % dovecot.port], allow=())
    msgs = tricky_messages()[:4]
    for _, m in msgs:
        dovecot.deliver("alice", m)
    with direct(dovecot) as d:
        want = retr_all_raw(d, len(msgs)) + [d.cmd_multi("UIDL")]
    with proxy.connect() as c:
        assert c.greeting.startswith(b"+OK Dovecot")
        c.login("alice", USERS["alice"])          # plain USER, no routing suffix
        got = retr_all_raw(c, len(msgs)) + [c.cmd_multi("UIDL")]
        assert c.cmd("QUIT").startswith(b"+OK")
    assert got == want
    with proxy.connect() as c:
        r = c.cmd("AUTH PLAIN " + plain_ir("john@example.com", USERS["john@example.com"]))
        assert r.startswith(b"+OK"), r
        assert c.ok("STAT") == b"+OK 0 0\r\n"


def test_dele_and_quit_pipelined_commit(dovecot, proxy):
    for i in range(3):
        dovecot.deliver("alice", message("pq%d" % i, b"x\n"))
    with via(proxy, dovecot) as c:
        c.send(b"DELE 1\r\nDELE 2\r\nRETR 3\r\nQUIT\r\n")
        replies = read_replies(c, ["DELE 1", "DELE 2", "RETR 3", "QUIT"])
        assert [r[0][:3] for r in replies] == [b"+OK"] * 4, replies
        assert c.is_closed(5)
    assert dovecot.stored_count("alice") == 1


def test_client_vanishes_during_a_big_retr(dovecot, proxy):
    """Hang up after 100 KB of a 20 MB RETR (with a DELE pending): the
    upstream is closed without QUIT and the proxy carries on."""
    dovecot.deliver("alice", big_message(20))
    dovecot.deliver("alice", message("small", b"small\n"))
    c = via(proxy, dovecot)
    c.ok("DELE 2")
    c.send(b"RETR 1\r\n")
    got = 0
    while got < 100 * 1024:
        got += len(c.sock.recv(65536))
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()
    dovecot.wait_log(r"pop3\(alice\).*Disconnected", 1, timeout=15)
    ends = re.findall(r"pop3\(alice\).*Disconnected: ([^\n]*)", dovecot.log_text())
    assert not any(e.startswith("Logged out") for e in ends), ends
    assert dovecot.stored_count("alice") == 2
    with via(proxy, dovecot) as c2:
        assert c2.ok("STAT").startswith(b"+OK 2 ")


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_reader_does_not_make_the_proxy_buffer_the_message(dovecot, proxy):
    """Backpressure: while a client reads nothing of a 20 MB RETR, the proxy
    must not pull the whole message into memory (it stops reading upstream)."""
    dovecot.deliver("alice", big_message(20))
    c = via(proxy, dovecot)
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        before = rss_kib(proxy.proc.pid)
        c.send(b"RETR 1\r\n")
        time.sleep(1.5)
        grown = rss_kib(proxy.proc.pid) - before
        assert grown < 8 * 1024, "proxy RSS grew by %d KiB for one stalled reader" % grown
        # And the reader, once it reads, gets the whole message intact.
        status, raw = c.line(), c.multi()
        assert octets(status) == len(unstuff(raw)) >= 20 * 1024 * 1024
    finally:
        c.close()
