# UIDLs a filter is told come from the client's own UIDL listings; a hostile
# server's listing is relayed as is but cannot make the proxy store nonsense
# or grow a table from one line.
from harness import read_replies
from pyfilter import FilterProc

LISTING = (b"+OK\r\n"
           b"1 good-uid-1\r\n"
           b"999999 far-too-high\r\n"      # one line must not cost megabytes
           b"2 " + b"u" * 200 + b"\r\n"    # longer than RFC 1939's 70
           b"3 bad\x01uid\r\n"             # control character
           b"x not-a-number\r\n"
           b"4\r\n"                        # no uid at all
           b"5 good-uid-5\r\n"
           b".\r\n")
MSG = b"Subject: m\r\n\r\nbody\r\n"


def rss(pid):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def server(conn):
    conn.login()
    while True:
        l = conn.line()
        if l is None:
            return
        verb = l.split(b" ")[0].strip().upper()
        if verb == b"UIDL":
            conn.send(LISTING)
        elif verb == b"RETR":
            conn.send(b"+OK %d octets\r\n" % len(MSG) + MSG + b".\r\n")
        elif verb == b"QUIT":
            conn.send(b"+OK bye\r\n")
            return
        else:
            conn.send(b"-ERR no\r\n")


def test_hostile_uidl_listing(proxy_factory, fake_upstream, procs, wtmp):
    f = FilterProc(procs, wtmp, mode="accept").start()
    fake = fake_upstream(server)
    proxy = proxy_factory([f.flag, "--filter-timeout", "5"])
    with proxy.connect() as c:
        c.ok("USER alice%%127.0.0.1:%d" % fake.port)
        c.ok("PASS pw")
        before = rss(proxy.proc.pid)
        status, body = c.cmd_multi("UIDL")
        after = rss(proxy.proc.pid)
        # Relayed byte for byte, whatever it holds.
        assert status + body == LISTING
        cmds = ["RETR 1", "RETR 2", "RETR 3", "RETR 5", "QUIT"]
        c.send("".join(x + "\r\n" for x in cmds).encode())
        replies = read_replies(c, cmds)
    assert all(r[0].startswith(b"+OK") for r in replies), replies
    uidl = {r["message"]["number"]: r["message"]["uidl"] for r in f.requests()}
    assert uidl == {1: "good-uid-1", 2: None, 3: None, 5: "good-uid-5"}, uidl
    # A table for message 999999 would be 8 MB of pointers.
    assert after - before < 2 * 1024 * 1024, (before, after)
    fake.check()
