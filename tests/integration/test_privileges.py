# Least privilege: started as root, pop3proxyd binds, then runs as --user;
# without --user it refuses to stay root unless --allow-root is given.
import os
import socket
import subprocess
import time

import pytest

from harness import PROXY_BIN, USERS, free_port, message

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")


def status_ids(pid):
    ids = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Uid", "Gid", "Groups"):
                ids[k] = v.split()
    return ids


def test_drops_to_user_after_binding(dovecot, proxy_factory):
    dovecot.deliver("alice", message("priv", b"read as nobody\n"))
    proxy = proxy_factory(["--user", "nobody"])
    ids = status_ids(proxy.proc.pid)
    assert ids["Uid"] == ["65534"] * 4, ids      # real, effective, saved, fs
    assert ids["Gid"] == ["65534"] * 4, ids
    assert "running as nobody" in proxy.log_text()
    with proxy.connect() as c:
        c.login(dovecot.route("alice"), USERS["alice"])
        st = c.cmd("STAT")
        assert st.startswith(b"+OK 1 "), st


def test_binds_privileged_port_then_drops():
    port = 0
    for candidate in range(900, 1000):
        try:
            s = socket.socket()
            s.bind(("127.0.0.1", candidate))
            s.close()
            port = candidate
            break
        except OSError:
            continue
    assert port, "no free privileged port"
    p = subprocess.Popen([str(PROXY_BIN), "--listen", "127.0.0.1:%d" % port,
                          "--dns-server", "127.0.0.1:1", "--user", "nobody"],
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        assert status_ids(p.pid)["Uid"][1] == "65534"
    finally:
        p.terminate()
        _, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    assert "running as nobody" in err


def test_refuses_root_without_user():
    port = free_port()
    r = subprocess.run([str(PROXY_BIN), "--listen", "127.0.0.1:%d" % port,
                        "--dns-server", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0
    assert "refusing to run as root" in r.stderr


def test_unknown_user_refused():
    r = subprocess.run([str(PROXY_BIN), "--listen", "127.0.0.1:%d" % free_port(),
                        "--dns-server", "127.0.0.1:1", "--user", "no-such-user-xyz"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0
    assert "no such user" in r.stderr


def test_not_dumpable():
    """Core dumps are off: /proc/PID/status shows the process is not dumpable
    through its core limit, and ptrace-style access by same-uid processes is
    refused (PR_SET_DUMPABLE 0 makes /proc/PID/mem root-owned)."""
    port = free_port()
    p = subprocess.Popen([str(PROXY_BIN), "--listen", "127.0.0.1:%d" % port,
                          "--dns-server", "127.0.0.1:1", "--user", "nobody"],
                         stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        with open("/proc/%d/limits" % p.pid) as f:
            core = [l for l in f if l.startswith("Max core file size")][0]
        assert core.split()[4] == "0", core
        # Not dumpable: the process's /proc files belong to root, not nobody.
        assert os.stat("/proc/%d/mem" % p.pid).st_uid == 0
    finally:
        p.terminate()
        p.communicate(timeout=10)
