# TLS towards the mail client: POP3S and STLS with Python's ssl, CAPA, the
# STLS injection case, --require-tls, stalled handshakes and SIGHUP reload.
import os
import poplib
import pwd
import re
import signal
import socket
import ssl
import time

import pytest

from harness import MAIL_USER, USERS, RawPop3, crlf, free_port, message, unstuff
from tlsutil import (CA, TlsPop3, capa_names, der_of, login_and_stat, pki,  # noqa: F401
                     route, start_tls_proxy, starttls, tls_dovecot, tls_wrap)

PW = USERS["alice"]


def poplib_retr_all(p, dovecot):
    p.user(route(dovecot))
    p.pass_(PW)
    n, _ = p.stat()
    out = [b"\r\n".join(p.retr(i)[1]) + b"\r\n" for i in range(1, n + 1)]
    p.quit()
    return out


# --------------------------------------------------------------------------
# POP3S and STLS with poplib, TLS on both sides

def test_poplib_pop3_ssl_both_sides_tls(pki, tls_dovecot, proxy_factory):
    msgs = [message("ssl-%d" % i, b"over POP3S %d\n" % i) for i in range(3)]
    for m in msgs:
        tls_dovecot.deliver("alice", m)
    proxy = start_tls_proxy(proxy_factory, pki, tls_dovecot)
    p = poplib.POP3_SSL("127.0.0.1", proxy.tls_port, context=pki.ctx(), timeout=10)
    assert p.sock.getpeercert(binary_form=True) == der_of(pki.cert)
    assert p.sock.version() in ("TLSv1.2", "TLSv1.3")
    # Upstream by the implicit-TLS port: encrypted and verified on both legs.
    p.user("alice%%127.0.0.1:%d" % tls_dovecot.tls_port)
    p.pass_(PW)
    got = [b"\r\n".join(p.retr(i)[1]) + b"\r\n" for i in range(1, len(msgs) + 1)]
    p.quit()
    assert got == [crlf(m) for m in msgs]
    log = proxy.log_text()
    assert re.search(r"TLS with client: TLSv1\.[23] ", log), log[-3000:]
    assert re.search(r"TLS with server 127\.0\.0\.1: \S+ \S+, certificate verified", log)
    assert PW not in log


def test_poplib_stls_both_sides_tls(pki, tls_dovecot, proxy_factory):
    msgs = [message("stls-%d" % i, b"after STLS %d\n" % i) for i in range(3)]
    for m in msgs:
        tls_dovecot.deliver("alice", m)
    proxy = start_tls_proxy(proxy_factory, pki, tls_dovecot, listen_tls=False)
    p = poplib.POP3("127.0.0.1", proxy.port, timeout=10)
    assert "STLS" in p.capa()
    p.stls(context=pki.ctx())
    assert p.sock.getpeercert(binary_form=True) == der_of(pki.cert)
    assert "STLS" not in p.capa()          # not after TLS is up
    # Upstream by the plain port: the proxy does STLS there too (auto).
    assert poplib_retr_all(p, tls_dovecot) == [crlf(m) for m in msgs]
    log = proxy.log_text()
    assert "TLS with client" in log and "certificate verified" in log, log[-3000:]


def test_pop3s_client_must_verify_the_proxy(pki, dovecot, proxy_factory, wtmp):
    # The proxy presents exactly the configured certificate: a client that
    # trusts another CA refuses it (the client side really is verified TLS).
    proxy = start_tls_proxy(proxy_factory, pki)
    proxy.expect_exit = True      # the exit status is checked below
    other = CA(wtmp / "otherca", "otherca")
    with pytest.raises(ssl.SSLCertVerificationError):
        TlsPop3("127.0.0.1", proxy.tls_port, other.client_context())
    # And the proxy survives the aborted handshake.
    with TlsPop3("127.0.0.1", proxy.tls_port, pki.ctx()) as c:
        assert c.greeting.startswith(b"+OK")
    rc, _ = proxy.stop()
    assert rc == 0, "proxy exit status %s after SIGTERM" % rc


# --------------------------------------------------------------------------
# CAPA and STLS rules

def test_capa_offers_stls_only_with_a_certificate(pki, dovecot, proxy_factory):
    plain = proxy_factory()
    with plain.connect() as c:
        assert "STLS" not in {n.decode() for n in capa_names(c)}
        r = c.cmd("STLS")
        assert r.startswith(b"-ERR"), r
        # The refusal leaves the session in plain text and usable.
        assert c.cmd("NOOP").startswith(b"-ERR")
        assert b"USER" in capa_names(c)

    tls = start_tls_proxy(proxy_factory, pki)
    with tls.connect() as c:
        assert b"STLS" in capa_names(c)
        starttls(c, pki.ctx())
        assert b"STLS" not in capa_names(c)
        r = c.cmd("STLS")
        assert r.startswith(b"-ERR"), r            # already TLS
        login_and_stat(c, dovecot)
        # After login the CAPA is the server's, minus STLS.
        assert b"STLS" not in capa_names(c)
    with TlsPop3("127.0.0.1", tls.tls_port, pki.ctx()) as c:
        assert b"STLS" not in capa_names(c)        # POP3S: TLS from the start


def test_stls_refused_after_login_and_after_user(pki, dovecot, proxy_factory):
    m = message("after", b"still plain\n")
    dovecot.deliver("alice", m)
    proxy = start_tls_proxy(proxy_factory, pki)
    with proxy.connect() as c:
        c.ok("USER " + route(dovecot))
        r = c.cmd("STLS")
        assert r.startswith(b"-ERR"), r
        c.ok("PASS " + PW)
        assert b"STLS" not in capa_names(c)
        r = c.cmd("STLS")
        assert r.startswith(b"-ERR") and b"login" in r, r
        # Still the same plain-text session, still working.
        status, body = c.cmd_multi("RETR 1")
        assert status.startswith(b"+OK") and unstuff(body) == crlf(m)
    assert "TLS with client" not in proxy.log_text()


def test_stls_reply_is_exact(pki, proxy_factory):
    proxy = start_tls_proxy(proxy_factory, pki, listen_tls=False)
    with proxy.connect() as c:
        c.send(b"STLS\r\n")
        got = bytearray()
        # The proxy now waits for our ClientHello: nothing else may come.
        c.sock.settimeout(0.3)
        try:
            while True:
                d = c.sock.recv(4096)
                if not d:
                    break
                got += d
        except socket.timeout:
            pass
        assert re.fullmatch(rb"\+OK[^\r\n\0]*\r\n", bytes(got)), bytes(got)


def test_stls_injection_is_discarded(pki, dovecot, proxy_factory):
    """CVE-2011-0411: commands pipelined after STLS in the same plain-text
    segment must not be executed after the handshake."""
    proxy = start_tls_proxy(proxy_factory, pki)
    evil = route(dovecot, "bob")
    with proxy.connect() as c:
        c.send(b"STLS\r\nUSER " + evil.encode() + b"\r\nPASS " + USERS["bob"].encode() + b"\r\n")
        assert c.line().startswith(b"+OK")
        tls_wrap(c, pki.ctx())
        # The first reply over TLS must answer what we send now, not USER.
        status, body = c.cmd_multi("CAPA")
        assert status == b"+OK\r\n" or status.startswith(b"+OK"), status
        assert b"USER" in body and b"STLS" not in body, body
        r = c.cmd("PASS x")
        assert r.startswith(b"-ERR"), r   # no USER is pending
        # The session works normally afterwards.
        login_and_stat(c, dovecot)
    log = proxy.log_text()
    n = len(b"USER " + evil.encode() + b"\r\nPASS " + USERS["bob"].encode() + b"\r\n")
    assert re.search(r"discarded %d octets sent after STLS in plain text" % n, log), log[-3000:]
    assert "user bob routed" not in log
    assert USERS["bob"] not in log
    assert not re.search(r"Login: user=<bob>", dovecot.log_text())


def test_plain_text_after_stls_ok_kills_the_handshake(pki, dovecot, proxy_factory):
    # The injection in a separate write, after +OK: it is read as a TLS
    # record, the handshake fails and the connection is closed.
    proxy = start_tls_proxy(proxy_factory, pki)
    with proxy.connect() as c:
        c.ok("STLS")
        c.send(("USER " + route(dovecot, "bob") + "\r\n").encode())
        assert c.is_closed(5), c.after_close_data
    proxy.wait_log(r"client 127\.0\.0\.1:\d+: TLS handshake failed")
    assert "user bob routed" not in proxy.log_text()
    # The proxy is fine.
    with proxy.connect() as c:
        starttls(c, pki.ctx())
        login_and_stat(c, dovecot)


def _send_junk(port, junk, settle):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if settle:
        time.sleep(settle)
    s.sendall(junk)
    try:
        while s.recv(4096):
            pass          # a TLS alert, then EOF
    except ConnectionResetError:
        pass
    s.close()


JUNK = (b"USER alice\r\n", b"\x16\x03\x01\x00\x05hello", b"\x00" * 5000)


def test_garbage_on_pop3s_port(pki, dovecot, proxy_factory):
    proxy = start_tls_proxy(proxy_factory, pki)
    proxy.expect_exit = True      # the exit status is checked below
    for junk in JUNK:
        _send_junk(proxy.tls_port, junk, settle=0.05)
    assert len(re.findall(r"client 127\.0\.0\.1:\d+: TLS handshake failed",
                          proxy.log_text())) == len(JUNK)
    with TlsPop3("127.0.0.1", proxy.tls_port, pki.ctx()) as c:
        login_and_stat(c, dovecot)
    rc, _ = proxy.stop()
    assert rc == 0


def test_early_bytes_on_pop3s_port_do_not_corrupt_the_proxy(pki, dovecot, proxy_factory):
    proxy = start_tls_proxy(proxy_factory, pki)
    proxy.expect_exit = True      # this test checks the exit status itself
    # Junk sent at once, so it is there when the proxy accepts.
    for i in range(10):
        for junk in JUNK:
            _send_junk(proxy.tls_port, junk, settle=0)
    assert proxy.alive()
    with TlsPop3("127.0.0.1", proxy.tls_port, pki.ctx(), settle=0.05) as c:
        login_and_stat(c, dovecot)
    rc, took = proxy.stop(5)
    assert rc == 0, "proxy exit status %s after SIGTERM" % rc


# --------------------------------------------------------------------------
# protocol versions

def test_tls_min_version_13_refuses_tls12_client(pki, dovecot, proxy_factory):
    proxy = start_tls_proxy(proxy_factory, pki, extra=["--tls-min-version", "1.3"])
    ctx12 = pki.ctx()
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION|protocol version"):
        TlsPop3("127.0.0.1", proxy.tls_port, ctx12, settle=0.05)
    proxy.wait_log(r"client 127\.0\.0\.1:\d+: TLS handshake failed: unsupported protocol")
    with TlsPop3("127.0.0.1", proxy.tls_port, pki.ctx()) as c:
        assert c.sock.version() == "TLSv1.3"


def test_default_min_version_refuses_tls11_client(pki, dovecot, proxy_factory):
    proxy = start_tls_proxy(proxy_factory, pki)
    ctx11 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx11.load_verify_locations(str(pki.ca.pem))
    try:
        ctx11.minimum_version = ssl.TLSVersion.TLSv1
        ctx11.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx11.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError) as e:
        pytest.skip("this Python/OpenSSL cannot speak TLS 1.1: %s" % e)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        TlsPop3("127.0.0.1", proxy.tls_port, ctx11, settle=0.05)
    with TlsPop3("127.0.0.1", proxy.tls_port, pki.ctx()) as c:
        assert c.sock.version() in ("TLSv1.2", "TLSv1.3")


# --------------------------------------------------------------------------
# --require-tls

def test_require_tls_exempts_loopback_clients(pki, dovecot, proxy_factory):
    # Loopback clients are exempt by design, and tests may only use loopback:
    # this checks the flag is accepted and the exemption, not the refusal
    # (see the report: no honest non-loopback client address exists here).
    dovecot.deliver("alice", message("req", b"required\n"))
    proxy = start_tls_proxy(proxy_factory, pki, extra=["--require-tls"])
    with proxy.connect() as c:
        assert b"STLS" in capa_names(c)
        login_and_stat(c, dovecot)
    with proxy.connect() as c:
        starttls(c, pki.ctx())
        login_and_stat(c, dovecot)
    assert "TLS is required" not in proxy.log_text()


# --------------------------------------------------------------------------
# stalled handshakes do not stall anyone else

def test_stalled_handshakes_do_not_block_other_sessions(pki, dovecot, proxy_factory):
    m = message("fast", b"not blocked\n")
    dovecot.deliver("alice", m)
    proxy = start_tls_proxy(proxy_factory, pki, listen_tls=True)
    stalled = []
    try:
        # 1: connected to POP3S, silent.  2: half a ClientHello.
        s1 = socket.create_connection(("127.0.0.1", proxy.tls_port))
        stalled.append(s1)
        s2 = socket.create_connection(("127.0.0.1", proxy.tls_port))
        stalled.append(s2)
        hello = _client_hello(pki)
        s2.sendall(hello[:len(hello) // 2])
        # 3: STLS accepted, then silence.
        c3 = RawPop3("127.0.0.1", proxy.port)
        stalled.append(c3.sock)
        c3.ok("STLS")
        time.sleep(0.1)
        t0 = time.monotonic()
        with TlsPop3("127.0.0.1", proxy.tls_port, pki.ctx(), timeout=3) as c:
            login_and_stat(c, dovecot)
            status, body = c.cmd_multi("RETR 1")
            assert unstuff(body) == crlf(m)
            assert c.cmd("QUIT").startswith(b"+OK")
        with proxy.connect(timeout=3) as c:
            starttls(c, pki.ctx())
            login_and_stat(c, dovecot)
        took = time.monotonic() - t0
        assert took < 2.0, "full sessions took %.2f s next to stalled handshakes" % took
        # The stalled ones are still open (the proxy waits, it does not spin).
        for s in stalled:
            s.setblocking(False)
            try:
                assert s.recv(1) != b""
            except BlockingIOError:
                pass
    finally:
        for s in stalled:
            s.close()


def _client_hello(pki):
    """The bytes of a real ClientHello, captured from ssl's memory BIO."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = pki.ctx().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    data = outgoing.read()
    assert data[:1] == b"\x16" and len(data) > 100
    return data


# --------------------------------------------------------------------------
# SIGHUP reload

def _replace(src, dst):
    tmp = dst.with_name(dst.name + ".new")
    tmp.write_bytes(src.read_bytes())
    os.chmod(tmp, 0o600)
    pw = pwd.getpwnam(MAIL_USER)
    os.chown(tmp, pw.pw_uid, pw.pw_gid)
    os.replace(tmp, dst)


def test_sighup_reloads_certificate_without_dropping_sessions(pki, dovecot, proxy_factory, wtmp):
    msgs = [message("hup-%d" % i, b"reload %d\n" % i) for i in range(2)]
    for m in msgs:
        dovecot.deliver("alice", m)
    # The proxy reads its own copies, which the test replaces in place.
    # The harness runs the proxy as MAIL_USER (--user): after the privilege
    # drop a reload can only read files that user may read.
    live_cert, live_key = wtmp / "live.pem", wtmp / "live.key"
    _replace(pki.cert, live_cert)
    _replace(pki.key, live_key)
    proxy = proxy_factory(flags=["--tls-cert", live_cert, "--tls-key", live_key,
                                 "--listen-tls", "127.0.0.1:%d" % (tls_port := free_port())])
    proxy.wait_log(re.escape("listening on 127.0.0.1:%d (TLS)" % tls_port))
    old_der = der_of(pki.cert)

    ctx = pki.ctx()
    old_s = TlsPop3("127.0.0.1", tls_port, ctx)       # POP3S, logged in
    assert old_s.peer_der == old_der
    login_and_stat(old_s, dovecot)
    old_stls = proxy.connect()                         # STLS, not logged in yet
    starttls(old_stls, ctx)

    new_cert, new_key = pki.ca.issue("srv2", ["DNS:localhost", "IP:127.0.0.1"], cn="reloaded",
                                     serial=4242)
    _replace(new_cert, live_cert)
    _replace(new_key, live_key)
    proxy.signal(signal.SIGHUP)
    proxy.wait_log(r"reloaded .*live\.pem and .*live\.key")

    # Old sessions carry on, on the old certificate.
    status, body = old_s.cmd_multi("RETR 1")
    assert unstuff(body) == crlf(msgs[0])
    login_and_stat(old_stls, dovecot)
    status, body = old_stls.cmd_multi("RETR 2")
    assert unstuff(body) == crlf(msgs[1])
    # New ones get the new certificate, on both kinds of listener.
    with TlsPop3("127.0.0.1", tls_port, ctx) as c:
        assert c.peer_der == der_of(new_cert) != old_der
        login_and_stat(c, dovecot)
    with proxy.connect() as c:
        assert starttls(c, ctx) == der_of(new_cert)
    for c in (old_s, old_stls):
        assert c.cmd("QUIT").startswith(b"+OK")
        c.close()

    # A broken reload (key of another certificate) keeps the one in use.
    other_cert, other_key = pki.ca.issue("srv3", ["IP:127.0.0.1"], cn="mismatch")
    _replace(other_key, live_key)
    proxy.signal(signal.SIGHUP)
    proxy.wait_log(r"reload failed: keeping the certificate in use")
    assert proxy.alive()
    with TlsPop3("127.0.0.1", tls_port, ctx) as c:
        assert c.peer_der == der_of(new_cert)
        login_and_stat(c, dovecot)
