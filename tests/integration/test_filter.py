# test_filter.py: the filter path end to end: Dovecot upstream, pop3proxyd with
# --filter unix:PATH, and the Python test filter (pyfilter.py) deciding verdicts.
import hashlib
import os
import pwd
import re

import pytest

from harness import (CRLF, MAIL_USER, crlf, direct, message, octets, read_replies, tricky_messages,
                     unstuff, via)
from pyfilter import FilterProc


def writable_dir(path):
    """A directory the proxy (running as nobody) can write."""
    path.mkdir()
    pw = pwd.getpwnam(MAIL_USER)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def start_filter(procs, wtmp, name="f1", mode="accept", args=()):
    return FilterProc(procs, wtmp, name=name, mode=mode, args=args).start()


def flags(*filters, timeout=5, extra=()):
    out = []
    for f in filters:
        out.append(f.flag if isinstance(f, FilterProc) else f)
    return out + ["--filter-timeout", str(timeout)] + list(extra)


def served(dovecot, user="alice"):
    """What Dovecot itself serves for each message (unstuffed), by number."""
    c = direct(dovecot, user)
    n = int(c.ok("STAT").split()[1])
    out = {}
    for i in range(1, n + 1):
        st, body = c.cmd_multi("RETR %d" % i)
        out[i] = unstuff(body)
    c.ok("QUIT")
    c.close()
    return out


def retr(conn, i):
    st, body = conn.cmd_multi("RETR %d" % i)
    assert st.startswith(b"+OK"), st
    content = unstuff(body)
    # The +OK line tells the size of what is delivered, after the filters.
    assert octets(st) == len(content), (st, len(content))
    return content


def headers(content):
    return content.split(b"\r\n\r\n", 1)[0]


def test_accept_is_byte_exact_and_filter_sees_facts(dovecot, proxy_factory, procs, wtmp):
    for name, data in tricky_messages():
        dovecot.deliver("alice", data)
    f = start_filter(procs, wtmp, mode="accept")
    p = proxy_factory(flags(f))
    orig = served(dovecot)
    c = via(p, dovecot)
    uidls = dict(l.split() for l in c.cmd_multi("UIDL")[1].decode().splitlines()[:-1])
    for i in orig:
        assert retr(c, i) == orig[i], tricky_messages()[i - 1][0]
    c.ok("QUIT")
    reqs = f.requests()
    assert len(reqs) == len(orig)
    for r in reqs:
        n = r["message"]["number"]
        # the filter got the message unstuffed, exactly as the server has it
        assert r["sha256"] == hashlib.sha256(orig[n]).hexdigest()
        assert r["message"]["uidl"] == uidls[str(n)]
        assert r["message"]["command"] == "RETR"
        assert r["session"]["user"] == "alice"
        assert r["session"]["upstream_port"] == dovecot.port
        assert 0 < r["deadline_ms"] <= 5000
    # one log line per filtered message, with verdict, time and sizes
    lines = re.findall(r"filter: msg \d+ RETR result=deliver time=\d+ms size=\d+->\d+ "
                       r"chain=\[f1.sock:accept\(edits=0,\d+ms score=0.50,reason=clean,tags=ham\)\]",
                       p.log_text())
    assert len(lines) == len(orig)


def test_header_edits(dovecot, proxy_factory, procs, wtmp):
    dovecot.deliver("alice", message("edit me", b"body\n.dot\n",
                                     extra_headers=[b"X-Spam-Junk: 1", b"X-Spam-Junk: 2"]))
    f = start_filter(procs, wtmp, mode="edit")
    p = proxy_factory(flags(f))
    orig = served(dovecot)[1]
    c = via(p, dovecot)
    got = retr(c, 1)
    h = headers(got)
    assert b"\r\nX-Filtered: f1\r\n" in h + CRLF
    assert b"Subject: [filtered] edit me\r\n" in h + CRLF
    assert b"X-Spam-Junk" not in got
    assert got.split(b"\r\n\r\n", 1)[1] == orig.split(b"\r\n\r\n", 1)[1]
    # the size changed and the +OK line (checked in retr) says so
    assert len(got) != len(orig)
    c.ok("QUIT")


def test_replace(dovecot, proxy_factory, procs, wtmp):
    dovecot.deliver("alice", message("replace me", b"secret\n"))
    f = start_filter(procs, wtmp, mode="replace")
    p = proxy_factory(flags(f))
    c = via(p, dovecot)
    got = retr(c, 1)
    assert got.startswith(b"From: pyfilter@example.org\r\nSubject: replaced by f1\r\n\r\n")
    # bare LF made CRLF, the dot line stuffed on the wire and back, final CRLF added
    assert got.endswith(b"octets.\r\n.leading dot line\r\nno final newline\r\n")
    assert b"secret" not in got
    c.ok("QUIT")


def test_reject_with_quarantine(dovecot, proxy_factory, procs, wtmp):
    q = writable_dir(wtmp / "quarantine")
    dovecot.deliver("alice", message("infected", b"X5O!P%@AP\n.\n..\nend\n"))
    f = start_filter(procs, wtmp, mode="reject")
    p = proxy_factory(flags(f, extra=["--quarantine", str(q)]))
    orig = served(dovecot)[1]
    c = via(p, dovecot)
    uidl_before = c.cmd_multi("UIDL")[1]
    notice = retr(c, 1)
    files = [x for x in os.listdir(q) if not x.startswith(".")]
    assert len(files) == 1
    # the original is recoverable byte for byte, and the notice says where
    assert (q / files[0]).read_bytes() == orig
    assert files[0].encode() in notice
    h = headers(notice)
    for field in (b"From: ", b"To: <alice@127.0.0.1>", b"Date: ", b"Message-ID: <",
                  b"Subject: [rejected] infected - virus found: Test.EICAR",
                  b"Content-Type: text/plain"):
        assert field in h, field
    body = notice.split(b"\r\n\r\n", 1)[1]
    assert b"This message carried a virus and was removed." in body
    assert b"From:    sender@example.org" in body
    assert b"Subject: infected" in body
    assert all(len(l) <= 998 for l in notice.split(b"\r\n"))
    # LIST/UIDL still show the server's view: the message stays there
    assert c.cmd_multi("UIDL")[1] == uidl_before
    c.ok("QUIT")
    assert dovecot.stored_count("alice") == 1
    assert re.search(r"quarantined as .*%s" % re.escape(files[0]), p.log_text())


def test_reject_kept_by_the_filter(dovecot, proxy_factory, procs, wtmp):
    keep = wtmp / "keep"
    keep.mkdir()
    dovecot.deliver("alice", message("infected2", b"bad\n"))
    f = start_filter(procs, wtmp, mode="reject", args=["--keep-dir", str(keep)])
    p = proxy_factory(flags(f))   # no --quarantine: the filter's word is enough
    orig = served(dovecot)[1]
    c = via(p, dovecot)
    notice = retr(c, 1)
    [qid] = os.listdir(keep)
    assert qid.encode() in notice
    assert (keep / qid).read_bytes() == orig
    c.ok("QUIT")


def test_reject_nobody_keeps_it_is_tempfail(dovecot, proxy_factory, procs, wtmp):
    dovecot.deliver("alice", message("infected3", b"bad\n"))
    f = start_filter(procs, wtmp, mode="reject")
    p = proxy_factory(flags(f))
    c = via(p, dovecot)
    st = c.cmd("RETR 1")
    assert st.startswith(b"-ERR [SYS/TEMP]"), st
    c.ok("NOOP")
    c.ok("QUIT")


def test_quarantine_unwritable_is_tempfail(dovecot, proxy_factory, procs, wtmp):
    dovecot.deliver("alice", message("infected4", b"bad\n"))
    f = start_filter(procs, wtmp, mode="reject")
    p = proxy_factory(flags(f, extra=["--quarantine", str(wtmp / "does-not-exist")]))
    c = via(p, dovecot)
    st = c.cmd("RETR 1")
    assert st.startswith(b"-ERR [SYS/TEMP]"), st
    c.ok("QUIT")


def test_tempfail(dovecot, proxy_factory, procs, wtmp):
    dovecot.deliver("alice", message("later", b"not now\n"))
    dovecot.deliver("alice", message("now", b"fine\n", extra_headers=[b"X-Test-Action: accept"]))
    f = start_filter(procs, wtmp, mode="tempfail")
    p = proxy_factory(flags(f))
    orig = served(dovecot)
    c = via(p, dovecot)
    c.send(b"RETR 1\r\nRETR 2\r\nDELE 1\r\n")
    (st1, b1), (st2, b2), (st3, _) = read_replies(c, ["RETR 1", "RETR 2", "DELE 1"])
    assert st1.startswith(b"-ERR [SYS/TEMP]") and b"scanner busy" in st1, st1
    assert unstuff(b2) == orig[2]
    assert st3.startswith(b"+OK")
    c.cmd("RSET")
    c.ok("QUIT")
    assert dovecot.stored_count("alice") == 2


def test_chain_of_two(dovecot, proxy_factory, procs, wtmp):
    dovecot.deliver("alice", message("chained", b"body\n"))
    f1 = start_filter(procs, wtmp, name="one", mode="edit")
    f2 = start_filter(procs, wtmp, name="two", mode="edit")
    p = proxy_factory(flags(f1, f2))
    orig = served(dovecot)[1]
    c = via(p, dovecot)
    got = retr(c, 1)
    assert b"Subject: [filtered] [filtered] chained\r\n" in got
    assert b"X-Filtered: one\r\n" in got and b"X-Filtered: two\r\n" in got
    c.ok("QUIT")
    # each filter saw the previous one's output
    [r1], [r2] = f1.requests(), f2.requests()
    assert r1["sha256"] == hashlib.sha256(orig).hexdigest()
    assert r2["size"] > r1["size"]
    assert re.search(r"chain=\[one.sock:accept\(edits=3.*two.sock:accept\(edits=3", p.log_text())


def test_top_is_relayed_unfiltered(dovecot, proxy_factory, procs, wtmp):
    dovecot.deliver("alice", message("topped", b"one\ntwo\nthree\n"))
    f = start_filter(procs, wtmp, mode="replace")
    p = proxy_factory(flags(f))
    c = via(p, dovecot)
    d = direct(dovecot)
    assert c.cmd_multi("TOP 1 1") == d.cmd_multi("TOP 1 1")
    c.ok("QUIT")
    d.ok("QUIT")
    assert f.requests() == []


def test_top_is_filtered_when_the_filter_asks(dovecot, proxy_factory, procs, wtmp):
    dovecot.deliver("alice", message("topped", b"one\ntwo\nthree\n"))
    f = start_filter(procs, wtmp, mode="edit", args=["--commands", "retr,top"])
    p = proxy_factory(flags(f))
    c = via(p, dovecot)
    # The filter's grant arrives with its hello_ack, right after start.
    p.wait_log(r"filter f1.sock: connected to", timeout=5)
    st, body = c.cmd_multi("TOP 1 1")
    got = unstuff(body)
    assert octets(st) == len(got)
    assert b"X-Filtered: f1\r\n" in got
    assert got.endswith(b"\r\n\r\none\r\n"), got[-40:]
    c.ok("QUIT")
    [r] = f.requests()
    assert r["message"]["command"] == "TOP" and r["message"]["top_lines"] == 1


def test_max_size_streams_unfiltered(dovecot, proxy_factory, procs, wtmp):
    dovecot.deliver("alice", message("small", b"x\n"))
    dovecot.deliver("alice", message("large", b"y" * 5000 + b"\n.dot\n"))
    f = start_filter(procs, wtmp, mode="edit")
    p = proxy_factory(flags(f, extra=["--max-size", "2000"]))
    d = direct(dovecot)
    big_direct = d.cmd_multi("RETR 2")
    d.ok("QUIT")
    c = via(p, dovecot)
    assert b"X-Filtered: f1" in retr(c, 1)
    # over --max-size: relayed byte for byte, status line included
    assert c.cmd_multi("RETR 2") == big_direct
    c.ok("QUIT")
    assert [r["message"]["number"] for r in f.requests()] == [1]
