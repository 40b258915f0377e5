# Rules that exempt loopback need a peer that is not on loopback: the test
# makes a network namespace joined by a veth pair, and uses only its two ends.
"""198.18.0.1 (this side) and 198.18.0.2 (inside the namespace) are the only
addresses used: the project's own test host, made and removed by each test.
"""
import json
import os
import subprocess
import sys

import pytest

from harness import USERS, Dovecot, can_connect, message, wait_until
from tlsutil import pki  # noqa: F401

HERE_IP = "198.18.0.1"
PEER_IP = "198.18.0.2"
PW = USERS["alice"]


def ip(*args):
    r = subprocess.run(["ip"] + list(args), capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise RuntimeError("ip %s: %s" % (" ".join(args), r.stderr.strip()))


@pytest.fixture
def netns():
    """A namespace with 198.18.0.2, reachable from here as 198.18.0.1."""
    name = "p3t%d" % os.getpid()
    here, there = "p3h%d" % os.getpid(), "p3n%d" % os.getpid()
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "link", "del", here], capture_output=True)
    ip("netns", "add", name)
    try:
        ip("link", "add", here, "type", "veth", "peer", "name", there)
        ip("link", "set", there, "netns", name)
        ip("addr", "add", HERE_IP + "/30", "dev", here)
        ip("link", "set", here, "up")
        ip("netns", "exec", name, "ip", "addr", "add", PEER_IP + "/30", "dev", there)
        ip("netns", "exec", name, "ip", "link", "set", there, "up")
        ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", here], capture_output=True)


class NsDovecot(Dovecot):
    """The harness's Dovecot, run inside the namespace on 198.18.0.2."""

    def __init__(self, root, procs, ns):
        super().__init__(root, procs, apop=False, v6=False,
                         extra_conf="listen = %s\n" % PEER_IP)
        self.ns = ns

    def start(self):
        self._write_conf()
        self.proc = self.procs.spawn(["ip", "netns", "exec", self.ns, "dovecot", "-F",
                                      "-c", self.conf], "dovecot-stdout")
        wait_until(lambda: self.proc.poll() is not None or can_connect(PEER_IP, self.port),
                   10, what="dovecot in the namespace")
        assert self.proc.poll() is None, self.log_text()
        return self


@pytest.fixture
def remote_dovecot(netns, wtmp, procs):
    d = NsDovecot(wtmp / "nsdv", procs, netns)
    for u, p in USERS.items():
        d.add_user(u, p)
    d.start()
    yield d
    d.stop()


def in_ns(ns, code, timeout=30):
    """Run a Python snippet inside the namespace; it prints one JSON line."""
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_no_password_in_plain_text_to_a_remote_server(remote_dovecot, proxy_factory):
    remote_dovecot.deliver("alice", message("remote", b"over the veth\n"))
    proxy = proxy_factory(allow=("%s:*" % PEER_IP,))
    with proxy.connect() as c:
        r = c.cmd("USER alice%%%s:%d" % (PEER_IP, remote_dovecot.port))
        assert r.startswith(b"-ERR [SYS/PERM] %s:%d offers no TLS" % (
            PEER_IP.encode(), remote_dovecot.port)), r
    assert "refused plain-text login to %s" % PEER_IP in proxy.log_text()
    # Nothing reached Dovecot's authentication.
    assert "Login: user=<alice>" not in remote_dovecot.log_text()


def test_plain_text_to_a_remote_server_when_allowed(remote_dovecot, proxy_factory):
    m = message("remote", b"over the veth\n")
    remote_dovecot.deliver("alice", m)
    proxy = proxy_factory(["--allow-plaintext-upstream"], allow=("%s:*" % PEER_IP,))
    with proxy.connect() as c:
        c.login("alice%%%s:%d" % (PEER_IP, remote_dovecot.port), PW)
        st, body = c.cmd_multi("RETR 1")
        assert st.startswith(b"+OK") and b"over the veth" in body
        c.ok("QUIT")
    assert "unencrypted" in proxy.log_text()


def test_require_tls_refuses_a_remote_plain_text_client(netns, dovecot, pki, proxy_factory):  # noqa: F811
    cert, key = pki.ca.issue("nshost", ["IP:%s" % HERE_IP])
    dovecot.deliver("alice", message("tlsonly", b"read over TLS\n"))
    proxy = proxy_factory(["--tls-cert", cert, "--tls-key", key, "--require-tls"],
                          host=HERE_IP)
    route = "alice%%127.0.0.1:%d" % dovecot.port
    code = r"""
import json, socket, ssl
def line(f):
    return f.readline().decode()
s = socket.create_connection((%(host)r, %(port)d), timeout=10)
f = s.makefile("rb")
out = {"greeting": line(f)}
s.sendall(b"USER %(route)s\r\n"); out["user_plain"] = line(f)
s.sendall(b"PASS x\r\n"); out["pass_plain"] = line(f)
s.sendall(b"STLS\r\n"); out["stls"] = line(f)
ctx = ssl.create_default_context(cafile=%(ca)r)
t = ctx.wrap_socket(s, server_hostname=%(host)r)
g = t.makefile("rb")
t.sendall(b"USER %(route)s\r\n"); out["user_tls"] = line(g)
t.sendall(b"PASS %(pw)s\r\n"); out["pass_tls"] = line(g)
t.sendall(b"STAT\r\n"); out["stat"] = line(g)
t.sendall(b"QUIT\r\n"); out["quit"] = line(g)
print(json.dumps(out))
""" % {"host": HERE_IP, "port": proxy.port, "route": route, "pw": PW, "ca": str(pki.ca.pem)}
    out = in_ns(netns, code)
    assert out["greeting"].startswith("+OK"), out
    assert out["user_plain"].startswith("-ERR TLS is required"), out
    assert out["pass_plain"].startswith("-ERR TLS is required"), out
    assert out["stls"].startswith("+OK"), out
    assert out["user_tls"].startswith("+OK"), out
    assert out["pass_tls"].startswith("+OK"), out
    assert out["stat"].startswith("+OK 1 "), out
    assert out["quit"].startswith("+OK"), out
    # Only the TLS login reached Dovecot.
    dovecot.wait_log(r"Login: user=<alice>")   # Dovecot logs a moment later
    assert dovecot.log_text().count("Login: user=<alice>") == 1


def test_shutdown_refused_from_a_remote_client(netns, proxy_factory):
    proxy = proxy_factory(["--admin-shutdown"], host=HERE_IP)
    code = r"""
import json, socket
s = socket.create_connection((%r, %d), timeout=10)
f = s.makefile("rb")
g = f.readline().decode()
s.sendall(b"SHUTDOWN\r\n")
print(json.dumps({"greeting": g, "shutdown": f.readline().decode()}))
""" % (HERE_IP, proxy.port)
    out = in_ns(netns, code)
    assert out["shutdown"].startswith("-ERR"), out
    assert "SHUTDOWN refused from %s" % PEER_IP in proxy.log_text()
    assert proxy.alive()
