# The daemon's life: command line, start-up line, idle timeout, SIGTERM grace,
# a second signal, the SHUTDOWN command, and what its log must (not) contain.
import base64
import hashlib
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from harness import (PROXY_BIN, USERS, RawPop3, big_message, crlf, direct, free_port, is_listening, message,
                     plain_ir, unstuff, via, wait_until)

PW = USERS["alice"]


def connect_refused(proxy):
    """True if a new connection is refused or closed without a +OK greeting."""
    try:
        s = socket.create_connection((proxy.host, proxy.port), timeout=3)
    except ConnectionRefusedError:
        return True
    try:
        s.settimeout(3)
        data = s.recv(100)
        return not data.startswith(b"+OK")
    except (ConnectionResetError, socket.timeout):
        return True
    finally:
        s.close()


def session_ended_without_quit(dovecot, n=1):
    dovecot.wait_log(r"pop3\(alice\).*Disconnected", n)
    ends = re.findall(r"pop3\(alice\).*Disconnected: ([^\n]*)", dovecot.log_text())
    return not any(e.startswith("Logged out") for e in ends)


# --------------------------------------------------------------------------
# command line

def test_startup_logs_listening_line(proxy):
    assert "listening on 127.0.0.1:%d" % proxy.port in proxy.log_text()


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version(flag):
    r = subprocess.run([str(PROXY_BIN), flag], capture_output=True, timeout=10)
    assert r.returncode == 0, r
    assert r.stdout.strip(), r


@pytest.mark.parametrize("argv", [
    ["--no-such-flag"], ["--max-sessions", "abc"], ["--max-sessions", "-1"],
    ["--listen", "not an address"], ["--listen", "127.0.0.1:99999"], ["--log-level", "loud"],
    ["--idle-timeout", "soon"], ["--listen"], ["--allow-upstream", "127.0.0.1:port"],
    ["--dns-server", "not-an-ip"], ["extra-argument"], ["--grace", "1x"],
], ids=lambda a: "_".join(a).strip("-") or "empty")
def test_bad_flags_exit_2_with_one_line(argv):
    # Safe flags first, so that a wrongly accepted argv can't reach the network.
    safe = ["--listen", "127.0.0.1:%d" % free_port(), "--dns-server", "127.0.0.1:1"]
    r = subprocess.run([str(PROXY_BIN)] + safe + argv, capture_output=True, timeout=10)
    assert r.returncode == 2, r
    lines = r.stderr.decode(errors="replace").strip().splitlines()
    assert len(lines) == 1, r.stderr


def test_flag_equals_form(dovecot, proxy_factory):
    proxy = proxy_factory(["--max-sessions=5", "--idle-timeout=30"])
    with via(proxy, dovecot) as c:
        assert c.ok("STAT")


# --------------------------------------------------------------------------
# idle timeout

def test_idle_timeout_before_login(proxy_factory):
    proxy = proxy_factory(["--idle-timeout", "1"])
    with proxy.connect() as c:
        t = time.monotonic()
        assert c.is_closed(5), "idle client not disconnected"
        assert 0.8 < time.monotonic() - t < 5


def test_idle_timeout_after_login_sends_no_quit(dovecot, proxy_factory):
    proxy = proxy_factory(["--idle-timeout", "1"])
    dovecot.deliver("alice", message("idle", b"must survive\n"))
    c = via(proxy, dovecot)
    c.ok("DELE 1")
    t = time.monotonic()
    assert c.is_closed(5), "idle client not disconnected"
    assert 0.8 < time.monotonic() - t < 5
    c.close()
    assert session_ended_without_quit(dovecot), "the proxy sent QUIT upstream"
    assert dovecot.stored_count("alice") == 1


def test_idle_timeout_fake_upstream_sees_no_quit(proxy_factory, fake_upstream):
    def script(conn):
        conn.login()
        conn.expect(b"DELE 1")
        conn.send(b"+OK marked\r\n")
        conn.drain(10)
    fake = fake_upstream(script)
    proxy = proxy_factory(["--idle-timeout", "1"])
    with proxy.connect() as c:
        c.login("x%%127.0.0.1:%d" % fake.port, "pw")
        c.ok("DELE 1")
        assert c.is_closed(5)
    fake.wait_finished(1)
    assert fake.conns[0].peer_closed
    assert b"QUIT" not in fake.conns[0].received.upper()


def test_activity_keeps_the_session(dovecot, proxy_factory):
    proxy = proxy_factory(["--idle-timeout", "1"])
    with via(proxy, dovecot) as c:
        for _ in range(6):             # 2.4 s in all, never 1 s idle
            time.sleep(0.4)
            assert c.cmd("NOOP").startswith(b"+OK")


# --------------------------------------------------------------------------
# SIGTERM, second signal, SHUTDOWN

def test_sigterm_grace_lets_a_session_finish(dovecot, proxy_factory):
    proxy = proxy_factory(grace=10)
    proxy.expect_exit = True
    m = message("grace", b"finish me\n")
    dovecot.deliver("alice", m)
    dovecot.deliver("alice", message("grace2", b"delete me\n"))
    c = via(proxy, dovecot)
    proxy.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert connect_refused(proxy), "new sessions accepted after SIGTERM"
    time.sleep(1)
    status, raw = c.cmd_multi("RETR 1")
    assert unstuff(raw) == crlf(m)
    c.ok("DELE 2")
    assert c.cmd("QUIT").startswith(b"+OK")
    c.close()
    t = time.monotonic()
    rc = proxy.wait_exit(12)
    assert rc == 0, "exit status %s" % rc
    # Once the last session is gone, nothing is left to wait for.
    assert time.monotonic() - t < 3
    assert dovecot.stored_count("alice") == 1        # the QUIT committed the DELE


def test_sigterm_grace_expires_without_quit(dovecot, proxy_factory):
    proxy = proxy_factory(grace=1)
    proxy.expect_exit = True
    dovecot.deliver("alice", message("grace3", b"must survive\n"))
    c = via(proxy, dovecot)
    c.ok("DELE 1")
    t = time.monotonic()
    proxy.signal(signal.SIGTERM)
    assert c.is_closed(5), "session not closed when the grace period ended"
    assert 0.8 < time.monotonic() - t < 5
    c.close()
    assert proxy.wait_exit(5) == 0
    assert session_ended_without_quit(dovecot)
    assert dovecot.stored_count("alice") == 1


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_second_signal_closes_everything(second, dovecot, proxy_factory):
    proxy = proxy_factory(grace=30)
    proxy.expect_exit = True
    dovecot.deliver("alice", message("second", b"must survive\n"))
    c = via(proxy, dovecot)
    c.ok("DELE 1")
    proxy.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert c.cmd("NOOP").startswith(b"+OK")       # still served during the grace period
    t = time.monotonic()
    proxy.signal(second)
    assert c.is_closed(3), "session still open after the second signal"
    assert proxy.wait_exit(3) == 0
    assert time.monotonic() - t < 3
    c.close()
    assert session_ended_without_quit(dovecot)
    assert dovecot.stored_count("alice") == 1


def test_admin_shutdown(dovecot, proxy_factory):
    proxy = proxy_factory(["--admin-shutdown"], grace=10)
    proxy.expect_exit = True
    m = message("adm", b"admin shutdown\n")
    dovecot.deliver("alice", m)
    busy = via(proxy, dovecot)
    with proxy.connect() as admin:
        assert admin.cmd("SHUTDOWN") == b"+OK shutting down\r\n"
    time.sleep(0.3)
    assert connect_refused(proxy)
    status, raw = busy.cmd_multi("RETR 1")
    assert unstuff(raw) == crlf(m)
    assert busy.cmd("QUIT").startswith(b"+OK")
    busy.close()
    assert proxy.wait_exit(12) == 0


def test_shutdown_without_the_flag_is_unknown(dovecot, proxy):
    with proxy.connect() as c:
        r = c.cmd("SHUTDOWN")
        assert r.startswith(b"-ERR") and b"unknown command" in r.lower(), r
    time.sleep(0.2)
    assert proxy.alive()
    with via(proxy, dovecot) as c:
        assert c.ok("STAT")


def test_shutdown_after_login_is_relayed(dovecot, proxy_factory):
    proxy = proxy_factory(["--admin-shutdown"])
    with direct(dovecot) as d:
        want = d.cmd("SHUTDOWN")
    with via(proxy, dovecot) as c:
        assert c.cmd("SHUTDOWN") == want
    time.sleep(0.2)
    assert proxy.alive()
    with via(proxy, dovecot) as c:
        assert c.ok("STAT")


# --------------------------------------------------------------------------
# logging

def test_passwords_and_auth_data_never_logged(dovecot, proxy_factory):
    proxy = proxy_factory()
    secrets = set()
    # USER/PASS
    with via(proxy, dovecot) as c:
        c.ok("STAT")
    secrets.add(PW)
    # AUTH PLAIN, initial response and continuation
    bob = USERS["bob"]
    ir = plain_ir(dovecot.route("bob"), bob)
    with proxy.connect() as c:
        assert c.cmd("AUTH PLAIN " + ir).startswith(b"+OK")
    with proxy.connect() as c:
        c.cmd("AUTH PLAIN")
        assert c.cmd(ir).startswith(b"+OK")
    secrets |= {bob, ir}
    # Fixed-upstream mode: APOP digest and AUTH PLAIN pass through
    fixed = proxy_factory(["--upstream", "127.0.0.1:%d" % dovecot.port], allow=())
    with RawPop3(fixed.host, fixed.port) as c:
        stamp = re.search(rb"<[^>]+>", c.greeting).group(0)
        digest = hashlib.md5(stamp + bob.encode()).hexdigest()
        assert c.cmd("APOP bob " + digest).startswith(b"+OK")
    with RawPop3(fixed.host, fixed.port) as c:
        ir2 = plain_ir("alice", PW)
        assert c.cmd("AUTH PLAIN " + ir2).startswith(b"+OK")
    secrets |= {digest, ir2}
    # A wrong password last: Dovecot slows down every later login after one.
    with proxy.connect() as c:
        c.ok("USER " + dovecot.route("alice"))
        assert c.cmd("PASS Wrong-Secret-4417").startswith(b"-ERR")
    secrets.add("Wrong-Secret-4417")
    logs = proxy.log_text() + fixed.log_text()
    for s in secrets:
        assert s not in logs, "secret %r found in the proxy log" % s
        # nor the base64 of the bare password
        assert base64.b64encode(s.encode()).decode() not in logs


def test_session_end_line(dovecot, proxy):
    dovecot.deliver("alice", message("endline", b"count me\n"))
    with via(proxy, dovecot) as c:
        c.cmd_multi("RETR 1")
        c.cmd("QUIT")
    proxy.wait_log(r"session end:")
    line = [l for l in proxy.log_text().splitlines() if "session end:" in l][-1]
    assert re.search(r"\[[^\]]+\] session end: client=127\.0\.0\.1:\d+ user=\S+ "
                     r"upstream=127\.0\.0\.1:%d msgs=\d+ bytes_up=\d+ bytes_down=\d+ "
                     r"duration=\d+\.\d+s reason=\S" % dovecot.port, line), line
    sid = re.search(r"\[([^\]]+)\] session end", line).group(1)
    session_lines = [l for l in proxy.log_text().splitlines() if "[%s]" % sid in l]
    assert len(session_lines) >= 2


def test_two_listeners(dovecot, proxy_factory):
    if not dovecot.v6:
        pytest.skip("no ::1 here")
    port6 = free_port("::1")
    proxy = proxy_factory(["--listen", "[::1]:%d" % port6])
    proxy.wait_log(r"listening on \[::1\]:%d" % port6, timeout=5)
    m = message("two", b"either door\n")
    dovecot.deliver("alice", m)
    for host, port in (("127.0.0.1", proxy.port), ("::1", port6)):
        with RawPop3(host, port) as c:
            c.login(dovecot.route("alice"), PW)
            status, raw = c.cmd_multi("RETR 1")
            assert unstuff(raw) == crlf(m)


def test_daemon_mode_with_pidfile(dovecot, procs, wtmp):
    port = free_port()
    pidfile = wtmp / "pop3proxyd.pid"
    rc, out = procs.run([PROXY_BIN, "--listen", "127.0.0.1:%d" % port, "--dns-server",
                         "127.0.0.1:1", "--allow-upstream", "127.0.0.1:*", "--user", "nobody",
                         "--daemon", "--pidfile", pidfile], "pop3proxyd-daemon", timeout=10)
    pid = None
    try:
        assert rc == 0, out
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 5,
                   what="the pidfile")
        pid = int(pidfile.read_text().strip())
        wait_until(lambda: is_listening(port), 5, what="the daemon's listener")
        m = message("daemon", b"served by a daemon\n")
        dovecot.deliver("alice", m)
        with RawPop3("127.0.0.1", port) as c:
            c.login(dovecot.route("alice"), PW)
            status, raw = c.cmd_multi("RETR 1")
            assert unstuff(raw) == crlf(m)
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not os.path.exists("/proc/%d" % pid) or
                   "zombie" in open("/proc/%d/status" % pid).read(), 5,
                   what="the daemon to exit after SIGTERM")
        pid = None
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_sigterm_during_a_big_retr(dovecot, proxy_factory):
    """A 20 MB RETR under way when SIGTERM comes finishes intact within the grace."""
    proxy = proxy_factory(grace=20)
    proxy.expect_exit = True
    m = big_message(20)
    dovecot.deliver("alice", m)
    c = via(proxy, dovecot)
    c.sock.settimeout(20)
    c.send(b"RETR 1\r\n")
    status = c.line()
    proxy.signal(signal.SIGTERM)
    raw = c.multi()
    assert unstuff(raw) == crlf(m)
    assert c.cmd("QUIT").startswith(b"+OK")
    c.close()
    assert proxy.wait_exit(5) == 0
    assert status.startswith(b"+OK")
