# TLS towards the mail server: each --upstream-tls mode against a Dovecot with
# a test CA, certificate verification failures, --insecure-upstream, policy.
import re

import pytest

from harness import USERS, crlf, message, unstuff
from tlsutil import (CA, pki, route, start_tls_dovecot, start_tls_proxy,  # noqa: F401
                     tls_dovecot)

PW = USERS["alice"]
VERIFIED = r"TLS with server %s: TLSv1\.[23] \S+, certificate verified"


def dovecot_logins(dovecot, expect=True):
    """Dovecot's own record of each login: (text, was it over TLS). Its log
    process writes a login a moment after it happens: with expect, wait for
    the first (a test that expects none asks for expect=False)."""
    if expect:
        dovecot.wait_log(r"pop3-login: Info: Login: user=<alice>")
    lines = re.findall(r"pop3-login: Info: Login: user=<alice>.*", dovecot.log_text())
    return [(l, bool(re.search(r", TLS(,|$| )", l))) for l in lines]


def read_one(proxy, dovecot, port, host="127.0.0.1"):
    """Log in through the proxy to host:port, RETR 1; returns the message."""
    with proxy.connect() as c:
        c.ok("USER " + route(dovecot, "alice", host, port))
        c.ok("PASS " + PW)
        status, body = c.cmd_multi("RETR 1")
        assert status.startswith(b"+OK"), status
        assert c.cmd("QUIT").startswith(b"+OK")
    return unstuff(body)


def refused_login(proxy, dovecot, port, host="127.0.0.1"):
    """Log in through the proxy; returns the -ERR the client got.

    The proxy connects (and does TLS) on USER, so the refusal is the reply
    to USER.  (Whether the session stays usable afterwards is the subject of
    test_session_usable_after_upstream_tls_failure.)"""
    with proxy.connect() as c:
        r = c.cmd("USER " + route(dovecot, "alice", host, port))
        assert r.startswith(b"-ERR"), r
    return r.decode()


# --------------------------------------------------------------------------
# the four modes

MODES = [
    # (id, --upstream-tls, which Dovecot port, TLS expected)
    ("implicit", "implicit", "tls_port", True),
    ("stls", "stls", "port", True),
    ("auto-implicit-port", "auto", "tls_port", True),
    ("auto-plain-port-stls", "auto", "port", True),
    ("none", "none", "port", False),
]


@pytest.mark.parametrize("mode,which,tls", [m[1:] for m in MODES], ids=[m[0] for m in MODES])
def test_upstream_modes(mode, which, tls, pki, tls_dovecot, proxy_factory):
    m = message("mode-" + mode, b"through the proxy in mode %s\n" % mode.encode())
    tls_dovecot.deliver("alice", m)
    proxy = start_tls_proxy(proxy_factory, pki, tls_dovecot, listen_tls=False,
                            extra=["--upstream-tls", mode])
    port = getattr(tls_dovecot, which)
    assert read_one(proxy, tls_dovecot, port) == crlf(m)

    logins = dovecot_logins(tls_dovecot)
    assert len(logins) == 1, logins
    assert logins[0][1] == tls, "Dovecot saw TLS=%s: %s" % (logins[0][1], logins[0][0])
    log = proxy.log_text()
    if tls:
        assert re.search(VERIFIED % re.escape("127.0.0.1"), log), log[-3000:]
        assert "NOT verified" not in log
    else:
        assert "TLS with server" not in log, log[-3000:]
        # Loopback is exempt from the plain-text policy: no refusal.
        assert "refused plain-text" not in log


def test_plain_upstream_is_logged_as_plain(pki, tls_dovecot, proxy_factory):
    tls_dovecot.deliver("alice", message("plainlog", b"plain\n"))
    proxy = start_tls_proxy(proxy_factory, pki, tls_dovecot, listen_tls=False,
                            extra=["--upstream-tls", "none"])
    read_one(proxy, tls_dovecot, tls_dovecot.port)
    assert not dovecot_logins(tls_dovecot)[0][1]
    log = proxy.log_text()
    assert re.search(r"(?i)plain[- ]text|unencrypted|without TLS|no TLS", log), log[-3000:]


def test_upstream_by_name_localhost_verified(pki, tls_dovecot, proxy_factory):
    # Host names are checked against DNS: SANs (and sent as SNI).
    m = message("byname", b"by name\n")
    tls_dovecot.deliver("alice", m)
    proxy = start_tls_proxy(proxy_factory, pki, tls_dovecot, listen_tls=False,
                            allow=("127.0.0.1:*", "localhost:*"))
    assert read_one(proxy, tls_dovecot, tls_dovecot.tls_port, host="localhost") == crlf(m)
    assert re.search(VERIFIED % "localhost", proxy.log_text()), proxy.log_text()[-3000:]
    assert dovecot_logins(tls_dovecot)[0][1]


def test_stls_mode_refuses_server_without_stls(dovecot, pki, proxy_factory):
    # The harness's default Dovecot has ssl = no: no STLS in its CAPA.
    proxy = start_tls_proxy(proxy_factory, pki, listen_tls=False,
                            extra=["--upstream-tls", "stls"])
    err = refused_login(proxy, dovecot, dovecot.port)
    assert "STLS" in err, err
    assert not dovecot_logins(dovecot, expect=False)
    assert PW not in proxy.log_text()


def test_implicit_mode_against_plain_server_fails_cleanly(dovecot, pki, proxy_factory):
    # A plain POP3 greeting is not a TLS ServerHello: the handshake fails,
    # the client is told, nothing is sent in clear.
    proxy = start_tls_proxy(proxy_factory, pki, listen_tls=False,
                            extra=["--upstream-tls", "implicit"])
    err = refused_login(proxy, dovecot, dovecot.port)
    assert "TLS" in err, err
    assert not dovecot_logins(dovecot, expect=False)


# --------------------------------------------------------------------------
# verification failures

def wrong_name_dovecot(pki, dovecot_factory):
    cert, key = pki.ca.issue("other", ["DNS:other.example"])
    return start_tls_dovecot(dovecot_factory, cert, key)


@pytest.mark.parametrize("host,reason", [("127.0.0.1", "IP address mismatch"),
                                         ("localhost", "hostname mismatch")],
                         ids=["by-ip", "by-name"])
@pytest.mark.parametrize("which", ["tls_port", "port"], ids=["implicit", "stls"])
def test_wrong_host_name_refused(host, reason, which, pki, dovecot_factory, proxy_factory):
    d = wrong_name_dovecot(pki, dovecot_factory)
    proxy = start_tls_proxy(proxy_factory, pki, d, listen_tls=False,
                            allow=("127.0.0.1:*", "localhost:*"))
    port = getattr(d, which)
    err = refused_login(proxy, d, port, host=host)
    assert "certificate verification failed" in err and reason in err, err
    assert "%s:%d" % (host, port) in err, err
    log = proxy.log_text()
    assert re.search(r"certificate verification failed: %s" % reason, log), log[-3000:]
    assert not dovecot_logins(d, expect=False), "a login reached Dovecot over an unverified channel"
    assert PW not in log


@pytest.mark.parametrize("which", ["tls_port", "port"], ids=["implicit", "stls"])
@pytest.mark.parametrize("trust", ["system-store", "other-ca"])
def test_untrusted_ca_refused(trust, which, pki, tls_dovecot, proxy_factory, wtmp):
    if trust == "system-store":
        flags = ["--implicit-tls-ports", str(tls_dovecot.tls_port)]
    else:
        other = CA(wtmp / "other-ca", "otherca")
        flags = ["--upstream-ca", other.pem, "--implicit-tls-ports", str(tls_dovecot.tls_port)]
    proxy = proxy_factory(flags=flags)
    port = getattr(tls_dovecot, which)
    err = refused_login(proxy, tls_dovecot, port)
    assert "certificate verification failed" in err, err
    assert re.search(r"local issuer|self[- ]signed|unable to get", err), err
    log = proxy.log_text()
    assert "certificate verification failed" in log, log[-3000:]
    assert not dovecot_logins(tls_dovecot, expect=False)
    assert PW not in log


@pytest.mark.parametrize("which", ["tls_port", "port"], ids=["implicit", "stls"])
def test_insecure_upstream_pattern_lets_wrong_name_through(which, pki, dovecot_factory,
                                                           proxy_factory, wtmp):
    # Wrong name AND a CA the proxy does not trust: only the pattern helps.
    other = CA(wtmp / "untrusted", "untrusted")
    cert, key = other.issue("other", ["DNS:other.example"])
    d = start_tls_dovecot(dovecot_factory, cert, key)
    m = message("insecure", b"unverified but encrypted\n")
    d.deliver("alice", m)
    proxy = proxy_factory(flags=["--upstream-ca", pki.ca.pem,
                                 "--implicit-tls-ports", str(d.tls_port),
                                 "--insecure-upstream", "localhost"],
                          allow=("127.0.0.1:*", "localhost:*"))
    port = getattr(d, which)
    assert read_one(proxy, d, port, host="localhost") == crlf(m)
    log = proxy.log_text()
    assert "certificate of localhost will NOT be verified" in log, log[-3000:]
    assert re.search(r"TLS with server localhost: \S+ \S+, certificate NOT verified", log)
    assert dovecot_logins(d)[0][1], "the insecure session must still be encrypted"
    # The pattern is exact: 127.0.0.1 does not match "localhost".
    err = refused_login(proxy, d, port, host="127.0.0.1")
    assert "certificate verification failed" in err, err


def test_insecure_upstream_glob(pki, dovecot_factory, proxy_factory, wtmp):
    other = CA(wtmp / "untrusted", "untrusted")
    cert, key = other.issue("other", ["DNS:other.example"])
    d = start_tls_dovecot(dovecot_factory, cert, key)
    d.deliver("alice", message("glob", b"glob\n"))
    proxy = proxy_factory(flags=["--implicit-tls-ports", str(d.tls_port),
                                 "--insecure-upstream", "127.0.0.*"])
    read_one(proxy, d, d.tls_port)
    assert "certificate NOT verified" in proxy.log_text()


# --------------------------------------------------------------------------
# the plain-text policy

def test_plaintext_to_loopback_is_exempt_under_default_policy(dovecot, proxy_factory):
    # Default mode auto, no --allow-plaintext-upstream: a server without STLS
    # on loopback is still used (loopback traffic never leaves the machine).
    m = message("loop", b"loopback exempt\n")
    dovecot.deliver("alice", m)
    proxy = proxy_factory()
    assert read_one(proxy, dovecot, dovecot.port) == crlf(m)
    assert not dovecot_logins(dovecot)[0][1]
    assert "refused plain-text" not in proxy.log_text()



# --------------------------------------------------------------------------
# after a failed handshake

def test_session_usable_after_upstream_tls_failure(proxy_factory, fake_upstream):
    # A server that greets in plain text while the proxy expects implicit TLS.
    def script(c):
        c.send(b"+OK plain greeting, not a ServerHello\r\n")
        c.line(timeout=2)
    up = fake_upstream(script)
    proxy = proxy_factory(flags=["--upstream-tls", "implicit"])
    # The hang needs the server's bytes to be there before the proxy's first
    # handshake step; it happens in a few percent of tries, so try often.
    for i in range(60):
        with proxy.connect(timeout=2) as c:
            r = c.cmd("USER alice%%127.0.0.1:%d" % up.port)
            assert r.startswith(b"-ERR [SYS/PERM] TLS with 127.0.0.1:%d failed: TLS handshake "
                                b"failed" % up.port), r
            try:
                r2 = c.cmd("NOOP")
            except OSError:
                raise AssertionError("try %d: no reply to NOOP after a failed upstream "
                                     "handshake (session stuck)" % (i + 1))
            assert r2.startswith(b"-ERR"), r2
            assert c.cmd("QUIT").startswith(b"+OK")
