# TLS helpers for the integration tests: a test CA and certificates made with
# the openssl command line at test time, Dovecot TLS config, TLS POP3 clients.
"""Certificates, TLS-serving Dovecots and TLS-speaking raw POP3 clients.

Invariants:
- every key and certificate is made fresh per test by the real `openssl`
  command (EC P-256 keys: fast to make, accepted by OpenSSL and GnuTLS);
- nothing here trusts anything by default: a client context trusts exactly
  the CA file a test hands it;
- the fixtures below are imported by the test modules (pytest collects
  fixtures from a module's namespace), so conftest.py stays untouched.
"""

import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from harness import CRLF, Dovecot, RawPop3, USERS, free_port, wait_until, can_connect

# Both sides of the proxy promise TLS 1.2 or newer.
MIN_VERSION = ssl.TLSVersion.TLSv1_2


def _openssl(*args, cwd=None):
    r = subprocess.run(["openssl"] + [str(a) for a in args], cwd=cwd,
                       capture_output=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed:\n%s" % (" ".join(map(str, args)),
                                                      r.stderr.decode(errors="replace")))
    return r.stdout


class CA:
    """A self-signed test CA in dir/<name>.pem and dir/<name>.key."""

    def __init__(self, directory, name="ca"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.pem = self.dir / ("%s.pem" % name)
        self.key = self.dir / ("%s.key" % name)
        self._serial = 1000
        _openssl("req", "-x509", "-new", "-newkey", "ec",
                 "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", self.key, "-out", self.pem, "-days", "2",
                 "-subj", "/O=pop3proxyd tests/CN=%s" % name,
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def issue(self, stem, sans, cn=None, serial=None):
        """A server certificate for sans (["DNS:localhost", "IP:127.0.0.1"]).

        Returns (cert path, key path); the cert file holds the leaf only."""
        self._serial += 1
        serial = self._serial if serial is None else serial
        cn = cn or sans[0].split(":", 1)[1]
        cert, key = self.dir / ("%s.pem" % stem), self.dir / ("%s.key" % stem)
        csr, ext = self.dir / ("%s.csr" % stem), self.dir / ("%s.ext" % stem)
        ext.write_text("subjectAltName=%s\nbasicConstraints=CA:FALSE\n"
                       "keyUsage=critical,digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth\n" % ",".join(sans))
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=%s" % cn)
        _openssl("x509", "-req", "-in", csr, "-CA", self.pem, "-CAkey", self.key,
                 "-set_serial", serial, "-days", "2", "-out", cert, "-extfile", ext)
        key.chmod(0o600)
        return cert, key

    def client_context(self):
        """An ssl context that trusts this CA only and checks host names."""
        ctx = ssl.create_default_context(cafile=str(self.pem))
        ctx.minimum_version = MIN_VERSION
        return ctx


def der_of(pem_path):
    """The DER bytes of the (first) certificate in a PEM file."""
    return ssl.PEM_cert_to_DER_cert(Path(pem_path).read_text())


# --------------------------------------------------------------------------
# Dovecot with TLS

def dovecot_tls_conf(cert, key, pop3s_port):
    """extra_conf for harness.Dovecot: implicit TLS on pop3s_port, and STLS
    offered on the plain listener (Dovecot offers it whenever ssl = yes)."""
    return ("ssl = yes\n"
            "ssl_cert = <%s\n"
            "ssl_key = <%s\n"
            "service pop3-login {\n"
            "  inet_listener pop3s {\n"
            "    port = %d\n"
            "    ssl = yes\n"
            "  }\n"
            "}\n" % (cert, key, pop3s_port))


def start_tls_dovecot(dovecot_factory, cert, key):
    """A running Dovecot serving STLS on .port and implicit TLS on .tls_port."""
    tls_port = free_port()
    d = dovecot_factory(extra_conf=dovecot_tls_conf(cert, key, tls_port))
    d.tls_port = tls_port
    wait_until(lambda: can_connect("127.0.0.1", tls_port), 10,
               what="dovecot pop3s on port %d" % tls_port)
    return d


def route(dovecot, user="alice", host="127.0.0.1", port=None):
    """user%host:port for the proxy (port defaults to the plain one)."""
    return "%s%%%s:%d" % (user, host, dovecot.port if port is None else port)


# --------------------------------------------------------------------------
# raw POP3 over TLS

class TlsPop3(RawPop3):
    """RawPop3 over implicit TLS (POP3S); .peer_der is the server's leaf."""

    def __init__(self, host, port, ctx, server_hostname=None, timeout=10, settle=0.0):
        raw = socket.create_connection((host, port), timeout=timeout)
        # settle: let the proxy accept before the ClientHello arrives (see
        # test_early_bytes_on_pop3s_port_do_not_corrupt_the_proxy for why).
        if settle:
            time.sleep(settle)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname or host)
        except BaseException:
            raw.close()
            raise
        self.buf = bytearray()
        self.timeout = timeout
        self.peer_der = self.sock.getpeercert(binary_form=True)
        self.greeting = self.line()


def starttls(conn, ctx, server_hostname="127.0.0.1"):
    """STLS on a RawPop3: +OK, nothing buffered behind it, then the handshake.

    Returns the server's leaf certificate (DER)."""
    r = conn.cmd("STLS")
    if not r.startswith(b"+OK"):
        raise AssertionError("STLS refused: %r" % r)
    return tls_wrap(conn, ctx, server_hostname)


def tls_wrap(conn, ctx, server_hostname="127.0.0.1"):
    """The handshake on a RawPop3 whose STLS +OK has been read."""
    # A server that sent anything after +OK in plain text would be injecting.
    assert not conn.buf, "plain text after STLS +OK: %r" % bytes(conn.buf)
    conn.sock = ctx.wrap_socket(conn.sock, server_hostname=server_hostname)
    conn.peer_der = conn.sock.getpeercert(binary_form=True)
    return conn.peer_der


def capa_names(conn):
    """CAPA -> set of capability names (upper case)."""
    status, body = conn.cmd_multi("CAPA")
    assert status.startswith(b"+OK"), status
    return {l.split()[0].upper() for l in body.split(CRLF)[:-2] if l.strip()}


def login_and_stat(conn, dovecot, port=None, host="127.0.0.1", user="alice"):
    conn.ok("USER " + route(dovecot, user, host, port))
    conn.ok("PASS " + USERS[user])
    return conn.ok("STAT")


# --------------------------------------------------------------------------
# fixtures

class Pki:
    """A CA, a server certificate for localhost/127.0.0.1 and its files."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.ca = CA(self.dir, "ca")
        self.cert, self.key = self.ca.issue("srv", ["DNS:localhost", "IP:127.0.0.1", "IP:::1"])

    def ctx(self):
        return self.ca.client_context()


@pytest.fixture
def pki(wtmp):
    """Fresh test PKI in a directory Dovecot can read."""
    return Pki(wtmp / "pki")


@pytest.fixture
def tls_dovecot(pki, dovecot_factory):
    """Dovecot with alice/bob/john: STLS on .port, implicit TLS on .tls_port."""
    return start_tls_dovecot(dovecot_factory, pki.cert, pki.key)


def tls_proxy_flags(pki, tls_port=None, extra=()):
    """Proxy flags: trust the test CA upstream, serve the test cert to clients."""
    f = ["--upstream-ca", pki.ca.pem, "--tls-cert", pki.cert, "--tls-key", pki.key]
    if tls_port is not None:
        f += ["--listen-tls", "127.0.0.1:%d" % tls_port]
    return f + list(extra)


def start_tls_proxy(proxy_factory, pki, dovecot=None, extra=(), listen_tls=True, **kw):
    """A proxy with the test PKI; .tls_port is its POP3S port (if any).

    With dovecot given, its pop3s port is listed in --implicit-tls-ports."""
    tls_port = free_port() if listen_tls else None
    flags = tls_proxy_flags(pki, tls_port, extra)
    if dovecot is not None and getattr(dovecot, "tls_port", None):
        flags += ["--implicit-tls-ports", str(dovecot.tls_port)]
    p = proxy_factory(flags=flags, **kw)
    p.tls_port = tls_port
    if tls_port is not None:
        p.wait_log(re.escape("listening on 127.0.0.1:%d (TLS)" % tls_port))
    return p


# --------------------------------------------------------------------------
# real clients over TLS (runners as in clients.py, with TLS settings)

def mpop_tls(procs, work, host, port, user, password, ca_pem, starttls):
    """mpop with TLS: POP3S (starttls False) or STLS; keeps the mail."""
    import os
    from clients import _mda, _numbered, _rcquote
    work, mda, out = _mda(work)
    rc = work / "mpoprc"
    rc.write_text("account default\n"
                  "host %s\nport %d\nuser %s\npassword %s\n"
                  "auth user\ntls on\ntls_starttls %s\ntls_trust_file %s\n"
                  "received_header off\nkeep on\nonly_new off\nuidls_file %s\n"
                  "delivery mda %s\n" % (host, port, _rcquote(user), _rcquote(password),
                                          "on" if starttls else "off", ca_pem,
                                          work / "uidls", _rcquote(mda)))
    rc.chmod(0o600)
    status, text = procs.run(["mpop", "-C", rc, "--debug", "-a"], "mpop-tls", timeout=60,
                             env=dict(os.environ, HOME=str(work)))
    return status, _numbered(out), text


def fetchmail_tls(procs, work, host, port, user, password, ca_pem, starttls):
    """fetchmail with certificate checking: --ssl (POP3S) or STLS."""
    import os
    from clients import _mda, _numbered, _rcquote
    work, mda, out = _mda(work)
    rc = work / "fetchmailrc"
    tls = ("sslproto 'tls1.2+' sslcertck sslcertfile %s" % _rcquote(str(ca_pem)) if starttls
           else "ssl sslcertck sslcertfile %s" % _rcquote(str(ca_pem)))
    rc.write_text("poll %s port %d proto pop3 auth password\n"
                  "  user %s password %s\n"
                  "  %s keep\n"
                  "  mda %s\n" % (host, port, _rcquote(user), _rcquote(password), tls,
                                  _rcquote(mda)))
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(work), HOME=str(work))
    status, text = procs.run(["fetchmail", "-f", rc, "--nosyslog", "--invisible", "-v",
                              "--nodetach", "--all", "-k"], "fetchmail-tls", timeout=60, env=env)
    return status, _numbered(out), text


def curl_tls(procs, work, url_base, user, password, msgno, ca_pem, ssl_reqd=False):
    """curl RETR msgno over pop3s:// or pop3:// with --ssl-reqd (STLS)."""
    import urllib.parse
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    out = work / ("curl-%s.out" % msgno)
    cred = urllib.parse.quote(user, safe="") + ":" + urllib.parse.quote(password, safe="")
    scheme, rest = url_base.split("://", 1)
    url = "%s://%s@%s/%s" % (scheme, cred, rest, msgno)
    argv = ["curl", "-sS", "-v", "--max-time", "30", "--cacert", ca_pem]
    if ssl_reqd:
        argv.append("--ssl-reqd")
    argv += ["-o", out, url]
    status, text = procs.run(argv, "curl-tls", timeout=40)
    return status, (out.read_bytes() if out.exists() else None), text
