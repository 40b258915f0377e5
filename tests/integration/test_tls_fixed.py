# Fixed-upstream (transparent) mode over TLS towards the server: implicit
# TLS, and STLS done by the proxy itself before the greeting is relayed.
import poplib
import re

import pytest

from harness import USERS, crlf, message
from tlsutil import pki, tls_dovecot  # noqa: F401

VERIFIED = "TLS with server 127.0.0.1: TLSv1.[23] .*certificate verified"


def tls_logins(dovecot):
    """(user, over TLS?) for each login in Dovecot's own log (which its log
    process writes a moment after the login)."""
    dovecot.wait_log(r"pop3-login: Info: Login: user=<")
    return [(m.group(1), bool(re.search(r", TLS(,|$| )", m.group(0))))
            for m in re.finditer(r"pop3-login: Info: Login: user=<(\w+)>.*", dovecot.log_text())]


@pytest.mark.parametrize("which", ["stls", "implicit"])
def test_fixed_upstream_over_tls_with_apop(which, pki, tls_dovecot, proxy_factory):  # noqa: F811
    """The server's own greeting (with its APOP timestamp) reaches the client
    even when the proxy first upgraded the connection with STLS, so APOP,
    which signs that timestamp, still works."""
    port = tls_dovecot.port if which == "stls" else tls_dovecot.tls_port
    m = message("fixedtls", b"transparent and encrypted\n")
    tls_dovecot.deliver("bob", m)
    proxy = proxy_factory(["--upstream", "127.0.0.1:%d" % port, "--upstream-ca", pki.ca.pem,
                           "--implicit-tls-ports", str(tls_dovecot.tls_port)], allow=())
    p = poplib.POP3(proxy.host, proxy.port, timeout=20)
    try:
        assert re.match(rb"\+OK Dovecot.*<[^>]+@[^>]+>", p.getwelcome()), p.getwelcome()
        p.apop("bob", USERS["bob"])
        assert p.stat()[0] == 1
        _, lines, _ = p.retr(1)
        assert b"\r\n".join(lines) + b"\r\n" == crlf(m)
    finally:
        p.quit()
    assert re.search(VERIFIED, proxy.log_text()), proxy.log_text()[-2000:]
    assert tls_logins(tls_dovecot) == [("bob", True)]


def test_fixed_upstream_stls_refused_certificate(pki, dovecot_factory, proxy_factory, wtmp):  # noqa: F811
    """A server whose certificate does not verify: the client gets -ERR
    naming the reason instead of the server's greeting, and no login happens."""
    from tlsutil import CA, start_tls_dovecot
    other = CA(wtmp / "other", "other")
    cert, key = other.issue("srv", ["IP:127.0.0.1"])
    d = start_tls_dovecot(dovecot_factory, cert, key)
    proxy = proxy_factory(["--upstream", "127.0.0.1:%d" % d.port, "--upstream-ca", pki.ca.pem],
                          allow=())
    with proxy.connect() as c:
        assert c.greeting.startswith(b"-ERR [SYS/PERM] TLS with 127.0.0.1:%d failed: "
                                     b"certificate verification failed" % d.port), c.greeting
        assert c.is_closed()
    assert "Login:" not in d.log_text()
