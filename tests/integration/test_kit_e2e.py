# Filter author kit end to end: Dovecot, pop3proxyd --filter unix:PATH with
# the reference filter or an example, and Python's poplib as the client.
import os
import poplib
import time
import pwd

import pytest

from test_kit import (EXE_2231, HAM, LEAKY, LIST, BLOCKED, PDF, SPAM, RULES,  # noqa: F401
                      start_filter)

pytestmark = pytest.mark.usefixtures("dovecot")


def fetch_all(proxy, dovecot, user="alice"):
    """Every message as the client gets it, via the proxy, with poplib."""
    p = poplib.POP3("127.0.0.1", proxy.port, timeout=30)
    try:
        p.user(dovecot.route(user))
        p.pass_(dovecot.users[user])
        count, _ = p.stat()
        out = []
        for i in range(1, count + 1):
            resp, lines, octets = p.retr(i)
            text = b"\r\n".join(lines) + b"\r\n"
            # The +OK line's count is what the client is really served.
            assert int(resp.split()[1]) == len(text), (resp, len(text))
            out.append(text)
        p.quit()
        return out
    finally:
        p.close()


def proxy_quarantine(wtmp):
    """Where the proxy keeps what a filter rejects without keeping it."""
    d = wtmp / "proxy-q"
    if not d.exists():
        d.mkdir()
        pw = pwd.getpwnam("nobody")     # the proxy drops to this user
        os.chown(d, pw.pw_uid, pw.pw_gid)
    return d


def run(dovecot, proxy_factory, filt, messages, wtmp):
    for m in messages:
        dovecot.deliver("alice", m)
    # The example filters run as root and leave their sockets root-only, so
    # this proxy stays root too; test_filter_restart_under_the_proxy runs one as
    # nobody against a socket made writable for it (--socket-mode).
    proxy = proxy_factory(flags=["--filter", "unix:" + filt.sock, "--filter-timeout", "10",
                                 "--quarantine", proxy_quarantine(wtmp), "--allow-root"])
    got = fetch_all(proxy, dovecot)
    assert len(got) == len(messages)
    # Filtered, not passed through on a failure.
    for g in got:
        assert b"X-POP3Proxy-Unfiltered" not in g and b"nfiltered" not in g.split(b"\r\n\r\n")[0]
    return proxy, got


def header_block(msg):
    """The header fields, each with its CRLF (without the empty line)."""
    return msg.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def test_ref_trace_header(dovecot, proxy_factory, start_filter, wtmp):
    f = start_filter("ref")
    _, (got,) = run(dovecot, proxy_factory, f, [HAM], wtmp)
    assert b"\r\nX-POP3Filter-Ref: checked by pop3filter-ref on " in header_block(got)
    # Nothing else changed: the body and the other fields are as stored.
    assert got.endswith(b"\r\n\r\nat noon?\r\n")
    assert header_block(got).startswith(header_block(HAM))


def test_ref_rules_end_to_end(dovecot, proxy_factory, start_filter, wtmp):
    conf = wtmp / "ref.conf"
    conf.write_text(RULES)
    qdir = wtmp / "q"
    qdir.mkdir()
    f = start_filter("ref", ["--config", conf, "--quarantine", qdir])
    _, got = run(dovecot, proxy_factory, f, [SPAM, EXE_2231, HAM], wtmp)
    assert b"\r\nSubject: [SPAM] cheap pills\r\n" in header_block(got[0])
    # The attachment is withheld: a notice instead, naming the file and
    # the quarantine id; the original is in the filter's quarantine.
    notice = got[1]
    assert b"invoice.exe" in notice and b"Withheld by the test rules" in notice
    assert b"TVqQAAMAAAAEAAAA" not in notice
    kept = list(qdir.glob("q-*.eml"))
    assert len(kept) == 1 and kept[0].read_bytes() == EXE_2231
    assert kept[0].name[:-4].encode() in notice
    assert b"[SPAM]" not in got[2] and b"X-POP3Filter-Ref: checked" in got[2]
    assert dovecot.stored_count("alice") == 3      # nothing lost upstream
    # The filter kept it, so the proxy did not.
    assert not list(proxy_quarantine(wtmp).iterdir())


def test_ref_strip_attachment_end_to_end(dovecot, proxy_factory, start_filter, wtmp):
    """--strip-attachment: the matching part becomes a note naming it, every
    other octet of the message stays, the octet count is the new size, and
    the original stays on the server. A PDF is left alone."""
    f = start_filter("ref", ["--strip-attachment", "*.exe", "--strip-attachment", "*.scr"])
    _, got = run(dovecot, proxy_factory, f, [EXE_2231, PDF], wtmp)
    exe, pdf = got
    head, _, rest = EXE_2231.partition(b"--zz\r\nContent-Type: application/octet-stream")
    assert exe.startswith(b"X-POP3Filter-Ref: checked by pop3filter-ref on ")
    assert b"; stripped 1 attachment(s)\r\n" + head in exe
    assert b"TVqQAAMAAAAEAAAA" not in exe
    assert exe.endswith(b"--zz\r\nContent-Type: text/plain; charset=us-ascii\r\n"
                        b"Content-Disposition: inline\r\n\r\n"
                        b"[pop3filter-ref removed the attachment \"invoice.exe\": "
                        b"its name matches *.exe]\r\n--zz--\r\n"), exe
    # The PDF passes with the usual trace header and nothing else changed.
    assert b"TVqQAAMAAAAEAAAA" in pdf and b"stripped" not in pdf
    assert dovecot.stored_count("alice") == 2      # the originals stay upstream
    assert b"stripped 1 attachment(s), the first \"invoice.exe\"" in f.log().encode()


EXAMPLES = [
    ("python", SPAM, lambda m: b"\r\nSubject: [SPAM] cheap pills\r\n" in header_block(m)),
    ("perl", BLOCKED, lambda m: b"promo@spam.example" in m and b"is blocked here" in m
     and b"you won" not in m),
    ("node", LIST, lambda m: b"\r\nX-List: users.lists.example.org\r\n" in header_block(m)),
    ("ruby", LEAKY, lambda m: b"X-Originating-IP:" not in m
     and b"\r\nX-Stripped: X-Originating-IP\r\n" in header_block(m)),
]


@pytest.mark.parametrize("name,data,check", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_end_to_end(name, data, check, dovecot, proxy_factory, start_filter, wtmp):
    f = start_filter(name)
    _, got = run(dovecot, proxy_factory, f, [data, HAM], wtmp)
    assert check(got[0]), got[0]
    assert got[1].endswith(b"\r\n\r\nat noon?\r\n")
    assert b"[SPAM]" not in got[1] and b"X-List" not in got[1]


def test_filter_restart_under_the_proxy(dovecot, proxy_factory, start_filter, wtmp):
    """SIGTERM the filter (it drains), start it again on the same socket: the
    proxy, now running as nobody, reconnects and filters again."""
    sock = wtmp / "restart.sock"
    conf = wtmp / "ref.conf"
    conf.write_text(RULES)
    args = ["--config", conf, "--socket-mode", "666"]
    f = start_filter("ref", args, sock=sock)
    dovecot.deliver("alice", SPAM)
    proxy = proxy_factory(flags=["--filter", "unix:%s" % sock, "--filter-timeout", "10"])
    (got,) = fetch_all(proxy, dovecot)
    assert b"[SPAM]" in header_block(got)
    assert f.stop() == 0
    f2 = start_filter("ref", args, sock=sock)

    def filtered_again():
        (m,) = fetch_all(proxy, dovecot)
        return b"[SPAM]" in header_block(m)
    deadline = time.monotonic() + 20
    while not filtered_again():
        assert time.monotonic() < deadline, f2.log()
        time.sleep(0.5)
