# Filtering over TLS on both sides: POP3S/STLS client, implicit TLS or STLS to
# Dovecot, the Python test filter editing, replacing and accepting messages.
import hashlib

import pytest

from harness import USERS, big_message, crlf, message, octets, unstuff
from pyfilter import FilterProc
from tlsutil import (TlsPop3, pki, start_tls_proxy, starttls, tls_dovecot)  # noqa: F401

PW = USERS["alice"]


def retr(conn, i):
    st, body = conn.cmd_multi("RETR %d" % i)
    assert st.startswith(b"+OK"), st
    content = unstuff(body)
    assert octets(st) == len(content), (st, len(content))
    return content


@pytest.mark.parametrize("client_side,server_side", [("pop3s", "implicit"), ("stls", "stls")])
def test_filter_verdicts_over_tls(client_side, server_side, pki, tls_dovecot, proxy_factory,
                                  procs, wtmp):
    msgs = [
        message("edit-me", b"edited\n", extra_headers=[b"X-Test-Action: edit",
                                                        b"X-Spam-Junk: yes"]),
        message("replace-me", b"replaced\n", extra_headers=[b"X-Test-Action: replace"]),
        message("accept-me", b"accepted\n", extra_headers=[b"X-Test-Action: accept"]),
        big_message(2, seed=b"tlsbig"),            # default mode: accept
    ]
    for m in msgs:
        tls_dovecot.deliver("alice", m)
    f = FilterProc(procs, wtmp, name="f1", mode="accept").start()
    proxy = start_tls_proxy(proxy_factory, pki, tls_dovecot,
                            extra=[f.flag, "--filter-timeout", "10"])
    port = tls_dovecot.tls_port if server_side == "implicit" else tls_dovecot.port
    if client_side == "pop3s":
        c = TlsPop3("127.0.0.1", proxy.tls_port, pki.ctx(), settle=0.05)
    else:
        c = proxy.connect()
        starttls(c, pki.ctx())
    with c:
        c.ok("USER alice%%127.0.0.1:%d" % port)
        c.ok("PASS " + PW)
        edited, replaced, accepted, big = (retr(c, i) for i in range(1, 5))
        assert c.cmd("QUIT").startswith(b"+OK")

    head = edited.split(b"\r\n\r\n", 1)[0]
    assert b"X-Filtered: f1" in head and b"Subject: [filtered] edit-me" in head, head
    assert b"X-Spam-Junk" not in head
    assert edited.endswith(b"\r\n\r\nedited\r\n")
    assert replaced != crlf(msgs[1]) and b"replaced" not in replaced.split(b"\r\n\r\n", 1)[1]
    assert accepted == crlf(msgs[2])
    assert big == crlf(msgs[3])

    # The filter saw every original exactly as Dovecot stores it.
    reqs = sorted(f.requests(), key=lambda r: r["message"]["number"])
    assert [r["message"]["number"] for r in reqs] == [1, 2, 3, 4]
    for r, m in zip(reqs, msgs):
        assert r["sha256"] == hashlib.sha256(crlf(m)).hexdigest()
    log = proxy.log_text()
    assert "TLS with client: TLSv1." in log
    assert "certificate verified" in log and "NOT verified" not in log
    assert PW not in log
