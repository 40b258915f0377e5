# Integration harness: real Dovecot, the real pop3proxyd, real POP3 clients and
# a scriptable hostile upstream, all on loopback ports with per-test temp dirs.
"""Helpers shared by the integration tests (fixtures live in conftest.py).

Everything here starts real programs.  Invariants:
- only 127.0.0.0/8 and ::1 are ever contacted; the proxy always gets
  --dns-server 127.0.0.1:1 so the machine's resolver is never queried;
- every process is started in its own session (process group) and registered
  with a ProcessSet, whose close() kills whatever is still alive, so a failing
  test never leaves a daemon behind;
- every program's output goes to a file under build/test-logs/<test>/.
"""

import base64
import contextlib
import os
import pwd
import re
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# POP3PROXY_BIN_DIR: test another build (make test-san: build/san/bin).
PROXY_BIN = Path(os.environ.get("POP3PROXY_BIN_DIR", REPO / "bin")) / "pop3proxyd"
# Under AddressSanitizer resident memory says nothing about the proxy (red
# zones, a quarantine of freed blocks): memory bounds are checked by the
# normal build's run of the suite, memory errors by the sanitizer run.
SANITIZED = "ASAN_OPTIONS" in os.environ
LOG_ROOT = REPO / "build" / "test-logs"
CRLF = b"\r\n"

# Dovecot will not serve mail as root, so mailboxes belong to "nobody".
MAIL_USER = "nobody"

# Every Dovecot of the tests has these users.  The passwords are distinctive
# so that a test can grep the proxy's log for them.
USERS = {
    "alice": "alice-Pw-91c3zq",
    "bob": "bob-Pw-77adxk",
    "john@example.com": "john-Pw-5e20mv",
}


# --------------------------------------------------------------------------
# ports and waiting

_handed_out = set()
_port_lock = threading.Lock()


def free_port(host="127.0.0.1"):
    """A loopback port that is free now and not handed out before in this run."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with _port_lock:
        for _ in range(100):
            s = socket.socket(fam, socket.SOCK_STREAM)
            try:
                s.bind((host, 0))
                port = s.getsockname()[1]
            finally:
                s.close()
            if port not in _handed_out and _port_free_on_both(port):
                _handed_out.add(port)
                return port
    raise RuntimeError("no free port")


def _port_free_on_both(port):
    # Dovecot listens on 127.0.0.1 and ::1 with the same port.
    for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


@contextlib.contextmanager
def blackhole():
    """A port on 127.0.0.1 whose full accept queue silently drops new SYNs,
    so connect() to it hangs (for connect timeouts)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    held = []
    try:
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            held.append(s)
        time.sleep(0.1)
        yield port
    finally:
        for s in held:
            s.close()
        lsock.close()


def closed_port():
    """A port on 127.0.0.1 where nothing listens (connect gets ECONNREFUSED)."""
    return free_port()


def wait_until(pred, timeout, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def can_connect(host, port):
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_eof(sock, timeout, sink, restore_timeout):
    """Read sock until EOF or reset (True) or until timeout (False)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            d = sock.recv(65536)
            if not d:
                return True
            sink += d
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (socket.timeout, OSError):
        return False
    finally:
        try:
            sock.settimeout(restore_timeout)
        except OSError:
            pass
    return False


def is_listening(port):
    """Whether some socket listens on this TCP port (from /proc/net, so that
    checking does not make a connection the server would log)."""
    hexport = ":%04X" % port
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[1].endswith(hexport) and fields[3] == "0A":
                        return True
        except OSError:
            continue
    return False


def ipv6_loopback_usable():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def world_tmpdir(prefix="p3t"):
    """A short temp dir under /tmp that Dovecot's dovenull and the mail user
    can traverse (pytest's tmp_path sits under a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o755)
    return d


def tail(path, nlines=60):
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return "<cannot read %s: %s>" % (path, e)
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-nlines:])


# --------------------------------------------------------------------------
# processes

class ProcessSet:
    """All processes a test started; close() kills the survivors."""

    def __init__(self, logdir):
        self.logdir = Path(logdir)
        self.procs = []
        self._n = 0

    def log_path(self, stem):
        self._n += 1
        return self.logdir / ("%02d-%s.log" % (self._n, stem))

    def spawn(self, argv, stem, env=None, stdin=subprocess.DEVNULL):
        log = self.log_path(stem)
        with open(log, "ab") as f:
            f.write(("$ %s\n" % " ".join(map(str, argv))).encode())
        out = open(log, "ab")
        try:
            p = subprocess.Popen([str(a) for a in argv], stdin=stdin, stdout=out,
                                 stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
        finally:
            out.close()
        p.log_path = log
        self.procs.append(p)
        return p

    def run(self, argv, stem, timeout=60, env=None, input=None):
        """Run to completion; returns (returncode, output text). Output is logged."""
        log = self.log_path(stem)
        try:
            r = subprocess.run([str(a) for a in argv], input=input, capture_output=True,
                               timeout=timeout, env=env, start_new_session=True)
            out, rc = r.stdout + r.stderr, r.returncode
        except subprocess.TimeoutExpired as e:
            out, rc = (e.stdout or b"") + (e.stderr or b"") + b"\n<TIMEOUT>\n", None
        with open(log, "wb") as f:
            f.write(("$ %s\nexit=%s\n" % (" ".join(map(str, argv)), rc)).encode())
            f.write(out)
        return rc, out.decode("utf-8", "replace")

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass


# --------------------------------------------------------------------------
# messages

def maildir_name(i):
    # Dovecot gives UIDs to new/ files in file-name order; fixed names keep
    # message numbers deterministic.
    return "%d.M%06dP1.pop3test" % (1700000000 + i, i)


def message(subject, body, eol=b"\r\n", extra_headers=()):
    """A simple RFC 5322 message; body is bytes with '\n' line ends."""
    hdr = [b"From: sender@example.org", b"To: alice@example.org",
           b"Subject: " + subject.encode(), b"Message-ID: <" + subject.encode() + b"@test>"]
    hdr += list(extra_headers)
    text = b"\n".join(hdr) + b"\n\n" + body
    return text.replace(b"\n", eol)


def crlf(data):
    """What Dovecot serves for a stored message: every line end made CRLF."""
    return re.sub(rb"\r?\n", b"\r\n", data)


def lf(data):
    return data.replace(b"\r\n", b"\n")


def big_message(megabytes, seed=b"big"):
    """A deterministic message of about that size, with long and dotted lines."""
    line_pat = []
    for i in range(64):
        n = 60 + (i * 37) % 1900   # some lines longer than 998 octets
        ch = bytes([0x41 + i % 26])
        line = (b"." if i % 9 == 0 else b"") + seed + ch * n
        line_pat.append(line)
    block = b"\r\n".join(line_pat) + b"\r\n"
    body = block * (megabytes * 1024 * 1024 // len(block) + 1)
    return message("big-%s" % seed.decode(), b"", eol=b"\r\n") + body


# --------------------------------------------------------------------------
# Dovecot

class Dovecot:
    """A private Dovecot POP3 server on 127.0.0.1 and ::1 (same port).

    root must be reachable by Dovecot's unprivileged users (see world_tmpdir)
    and short, for the UNIX sockets in base_dir.
    """

    def __init__(self, root, procs, apop=True, v6=None, extra_conf=""):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.procs = procs
        self.port = free_port()
        self.v6 = ipv6_loopback_usable() if v6 is None else v6
        self.users = {}
        self.mail = self.root / "mail"
        self.mail.mkdir(parents=True, exist_ok=True)
        pw = pwd.getpwnam(MAIL_USER)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        os.chown(self.mail, self.uid, self.gid)
        # UNIX socket paths must stay under 108 bytes: keep base_dir short.
        self.base = self.root / "b"
        self.base.mkdir()
        self.state = self.root / "state"
        self.state.mkdir(exist_ok=True)
        self.passwd = self.root / "passwd"
        self.passwd.write_text("")
        self.log = procs.log_path("dovecot")
        self.conf = self.root / "dovecot.conf"
        self.apop = apop
        self.extra_conf = extra_conf
        self.proc = None
        self._msgno = {}

    # users and mail -------------------------------------------------------
    def add_user(self, name, password):
        """Add a user (passwd-file is re-read by Dovecot when it changes)."""
        assert ":" not in name and "\n" not in name
        self.users[name] = password
        lines = ["%s:{PLAIN}%s::::::" % (u, p) for u, p in self.users.items()]
        tmp = self.passwd.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.passwd)
        md = self.maildir(name)
        for sub in ("", "new", "cur", "tmp"):
            (md / sub).mkdir(parents=True, exist_ok=True)
        for p in (md.parent, md, md / "new", md / "cur", md / "tmp"):
            os.chown(p, self.uid, self.gid)
        return name

    def maildir(self, user):
        return self.mail / user / "Maildir"

    def deliver(self, user, data):
        """Put one message, bytes exactly as given, into the user's Maildir/new."""
        n = self._msgno.get(user, 0) + 1
        self._msgno[user] = n
        md = self.maildir(user)
        tmp = md / "tmp" / maildir_name(n)
        tmp.write_bytes(data)
        os.chown(tmp, self.uid, self.gid)
        os.replace(tmp, md / "new" / maildir_name(n))

    def stored_count(self, user):
        md = self.maildir(user)
        return sum(1 for d in ("new", "cur") for f in (md / d).iterdir())

    # server ---------------------------------------------------------------
    def _write_conf(self):
        listen = "127.0.0.1, ::1" if self.v6 else "127.0.0.1"
        mechs = "plain apop" if self.apop else "plain"
        self.conf.write_text(f"""\
# written by tests/integration/harness.py
protocols = pop3
listen = {listen}
base_dir = {self.base}
state_dir = {self.state}
log_path = {self.log}
info_log_path = {self.log}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = {mechs}
auth_failure_delay = 0
first_valid_uid = 1
default_internal_user = dovenull
default_login_user = dovenull
mail_uid = {MAIL_USER}
mail_gid = {self.gid}
mail_location = maildir:{self.mail}/%u/Maildir
mail_fsync = never
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.passwd}
}}
userdb {{
  driver = static
  args = uid={self.uid} gid={self.gid} home={self.mail}/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.port}
  }}
  service_count = 0
  process_min_avail = 1
  client_limit = 1000
}}
service pop3 {{
  process_limit = 600
}}
service auth {{
  client_limit = 2000
}}
service anvil {{
  chroot =
  client_limit = 2000
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
protocol pop3 {{
  mail_max_userip_connections = 1000
}}
{self.extra_conf}
""")

    def start(self):
        self._write_conf()
        self.proc = self.procs.spawn(["dovecot", "-F", "-c", self.conf], "dovecot-stdout")
        try:
            wait_until(lambda: self.proc.poll() is not None or is_listening(self.port),
                       10, what="dovecot on port %d" % self.port)
        except TimeoutError:
            raise RuntimeError("dovecot did not start:\n" + tail(self.log) + tail(self.proc.log_path))
        if self.proc.poll() is not None:
            raise RuntimeError("dovecot exited:\n" + tail(self.log) + tail(self.proc.log_path))
        return self

    def stop(self):
        if self.proc is None:
            return
        # The whole group at once: the master alone waits ~1 s for children,
        # and now and then a child lingers for seconds; nothing of a test's
        # Dovecot is worth waiting for, so SIGKILL follows after 1 s.
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(1)
            except subprocess.TimeoutExpired:
                pass
            os.killpg(self.proc.pid, signal.SIGKILL)     # stragglers too
        except ProcessLookupError:
            pass
        self.proc.wait(5)

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def count_log(self, pattern):
        return len(re.findall(pattern, self.log_text()))

    def wait_log(self, pattern, count=1, timeout=10):
        return wait_until(lambda: self.count_log(pattern) >= count, timeout,
                          what="%d x /%s/ in dovecot log" % (count, pattern))

    def route(self, user, host="127.0.0.1", sep="%"):
        """The proxy login name that routes to this Dovecot."""
        h = "[%s]" % host if ":" in host else host
        return "%s%s%s:%d" % (user, sep, h, self.port)


# --------------------------------------------------------------------------
# a raw POP3 client: exact bytes, no unstuffing, no checks of its own

class POP3Error(Exception):
    pass


class RawPop3:
    def __init__(self, host, port, timeout=10, source=None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=source)
        self.buf = bytearray()
        self.timeout = timeout
        self.greeting = self.line()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        d = self.sock.recv(1 << 20)
        if not d:
            raise EOFError("connection closed; buffered %r" % bytes(self.buf[-200:]))
        self.buf += d

    def _take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def line(self):
        """One line including its LF (raises EOFError on close)."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                return self._take(i + 1)
            start = len(self.buf)
            self._fill()

    def multi(self):
        """The body of a multi-line reply, raw (stuffed), including '.\\r\\n'."""
        pos = 0
        while True:
            # The buffer starts at the body, so an empty body is a leading ".\r\n".
            if self.buf.startswith(b".\r\n"):
                return self._take(3)
            i = self.buf.find(b"\r\n.\r\n", pos)
            if i >= 0:
                return self._take(i + 5)
            pos = max(0, len(self.buf) - 4)
            self._fill()

    def cmd(self, text):
        if isinstance(text, str):
            text = text.encode()
        self.send(text + CRLF)
        return self.line()

    def ok(self, text):
        r = self.cmd(text)
        if not r.startswith(b"+OK"):
            raise POP3Error("%r -> %r" % (text, r))
        return r

    def cmd_multi(self, text):
        """(status line, raw body) ; body is None after -ERR."""
        r = self.cmd(text)
        if not r.startswith(b"+OK"):
            return r, None
        return r, self.multi()

    def login(self, user, password):
        self.ok("USER " + user)
        return self.ok("PASS " + password)

    def is_closed(self, timeout=5):
        """True if the peer closes (EOF or reset) within timeout; data is kept
        in self.after_close_data for inspection."""
        self.after_close_data = bytearray()
        return wait_eof(self.sock, timeout, self.after_close_data, self.timeout)


def is_multiline(command):
    """Whether a successful reply to this command has a body (RFC 1939/2449)."""
    words = command.split()
    verb = words[0].upper() if words else ""
    if verb in ("RETR", "TOP", "CAPA"):
        return True
    return verb in ("LIST", "UIDL") and len(words) == 1


def transcript(conn, commands):
    """Send each command in turn; [(status line, raw body or None)]."""
    out = []
    for cmd in commands:
        status = conn.cmd(cmd)
        body = conn.multi() if status.startswith(b"+OK") and is_multiline(cmd) else None
        out.append((status, body))
    return out


def read_replies(conn, commands):
    """Read the replies to commands already sent (pipelined), in order."""
    out = []
    for cmd in commands:
        status = conn.line()
        body = conn.multi() if status.startswith(b"+OK") and is_multiline(cmd) else None
        out.append((status, body))
    return out


def direct(dovecot, user="alice", source=None):
    """A session logged in straight to Dovecot."""
    c = RawPop3("127.0.0.1", dovecot.port, source=source)
    c.login(user, dovecot.users[user])
    return c


def via(proxy, dovecot, user="alice", sep="%", host="127.0.0.1"):
    """A session logged in through the proxy (routing mode) to Dovecot."""
    c = proxy.connect()
    c.login(dovecot.route(user, host=host, sep=sep), dovecot.users[user])
    return c


def unstuff(raw):
    """Raw multi-line body (with terminator) -> the content it carries."""
    assert raw.endswith(b".\r\n"), raw[-20:]
    body = raw[:-3]
    lines = body.split(b"\r\n")
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines)


def octets(status):
    m = re.match(rb"\+OK (\d+) octets", status)
    assert m, "no octet count in %r" % status
    return int(m.group(1))


def plain_ir(authcid, password, authzid=""):
    return base64.b64encode(("%s\0%s\0%s" % (authzid, authcid, password)).encode()).decode()


# --------------------------------------------------------------------------
# the proxy

class Proxy:
    def __init__(self, procs, flags=(), host="127.0.0.1", allow=("127.0.0.1:*",),
                 log_level="debug", dns="127.0.0.1:1", grace=None):
        self.procs = procs
        self.host = host
        self.port = free_port()
        self.listen = "%s:%d" % ("[%s]" % host if ":" in host else host, self.port)
        argv = [PROXY_BIN, "--listen", self.listen]
        if dns is not None:
            argv += ["--dns-server", dns]
        for a in allow:
            argv += ["--allow-upstream", a]
        if log_level:
            argv += ["--log-level", log_level]
        if grace is not None:
            argv += ["--grace", str(grace)]
        # The daemon refuses to stay root: run it as the unprivileged mail
        # user unless the test chooses (--user / --allow-root) itself.
        if os.geteuid() == 0 and not {"--user", "--allow-root"} & {str(f).split("=")[0] for f in flags}:
            argv += ["--user", MAIL_USER]
        argv += list(flags)
        self.argv = argv
        self.proc = None
        self.signalled = False      # the test sent a signal (stop() included)
        self.expect_exit = False    # the test checks the exit itself

    @property
    def log(self):
        return self.proc.log_path

    def start(self, timeout=10):
        if not PROXY_BIN.exists():
            raise RuntimeError("%s is not built (cd %s && make bin/pop3proxyd)" % (PROXY_BIN, REPO))
        self.proc = self.procs.spawn(self.argv, "pop3proxyd")
        want = "listening on %s" % self.listen

        def ready():
            if self.proc.poll() is not None:
                return True
            return want in self.log_text()
        try:
            wait_until(ready, timeout, what="'%s' in the proxy log" % want)
        except TimeoutError:
            # The contract promises the line; a separate test checks it.  Fall
            # back to connect() so one missing log line doesn't fail everything.
            if not is_listening(self.port):
                raise RuntimeError("proxy not listening:\n" + tail(self.log))
        # Best effort beyond the contract: the daemon logs "started" once it is
        # fully set up (after dropping privileges); don't fail if it doesn't.
        try:
            wait_until(lambda: self.proc.poll() is not None or
                       re.search(r"\bstarted\b", self.log_text()), 1, what="started")
        except TimeoutError:
            pass
        if self.proc.poll() is not None:
            raise RuntimeError("proxy exited with %s:\n%s" % (self.proc.returncode, tail(self.log)))
        return self

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, pattern, count=1, timeout=10):
        return wait_until(lambda: len(re.findall(pattern, self.log_text())) >= count, timeout,
                          what="%d x /%s/ in the proxy log" % (count, pattern))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig=signal.SIGTERM):
        self.signalled = True
        self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=5):
        """SIGTERM; returns (exit status or None if it hung, seconds taken)."""
        if self.proc is None:
            return 0, 0.0
        if self.proc.poll() is not None:
            return self.proc.returncode, 0.0
        t = time.monotonic()
        self.signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        took = time.monotonic() - t
        if rc is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        return rc, took

    def connect(self, timeout=5, source=None):
        return RawPop3(self.host, self.port, timeout=timeout, source=source)


# --------------------------------------------------------------------------
# a scriptable hostile upstream

class FakeConn:
    def __init__(self, sock, server):
        self.sock = sock
        self.server = server
        self.buf = b""
        self.received = b""
        self.peer_closed = None     # set by drain(): did the proxy close?
        sock.settimeout(10)

    def send(self, data):
        self.sock.sendall(data)

    def line(self, timeout=10):
        """One line from the proxy, or None at EOF/timeout."""
        self.sock.settimeout(timeout)
        try:
            while b"\n" not in self.buf:
                d = self.sock.recv(65536)
                if not d:
                    return None
                self.buf += d
                self.received += d
        except (socket.timeout, OSError):
            return None
        i = self.buf.index(b"\n")
        out, self.buf = self.buf[:i + 1], self.buf[i + 1:]
        return out

    def expect(self, prefix, timeout=10):
        l = self.line(timeout)
        if l is None or not l.upper().startswith(prefix.upper()):
            raise AssertionError("fake upstream expected %r, got %r" % (prefix, l))
        return l

    def login(self, greeting=b"+OK fake ready\r\n", capa=b"USER\r\nUIDL\r\nTOP\r\nPIPELINING\r\n",
              pass_reply=b"+OK logged in\r\n"):
        """Serve greeting, CAPA (routing mode asks), USER, PASS (answered
        with pass_reply); returns after PASS."""
        self.send(greeting)
        while True:
            l = self.line()
            if l is None:
                raise AssertionError("proxy closed during login")
            verb = l.split(b" ")[0].strip().upper()
            if verb == b"CAPA":
                self.send(b"+OK\r\n" + capa + b".\r\n")
            elif verb == b"USER":
                self.send(b"+OK\r\n")
            elif verb == b"PASS":
                self.send(pass_reply)
                return
            else:
                self.send(b"-ERR not now\r\n")

    def drain(self, timeout=5):
        """Read until EOF; True if the proxy closed within timeout."""
        got = bytearray()
        closed = wait_eof(self.sock, timeout, got, 10)
        self.received += bytes(got)
        self.peer_closed = closed
        return closed

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class FakeUpstream:
    """A TCP server on 127.0.0.1 that runs script(conn) for each connection.

    The script is plain Python using FakeConn helpers; exceptions are kept in
    .errors and re-raised by check().  Every byte received is kept per
    connection in .conns[i].received.
    """

    def __init__(self, script, host="127.0.0.1"):
        self.script = script
        self.host = host
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.conns = []
        self.errors = []
        self.done = threading.Event()
        self.finished = 0
        self._stop = False
        self.threads = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    def _accept(self):
        while not self._stop:
            r, _, _ = select.select([self.lsock], [], [], 0.1)
            if not r:
                continue
            try:
                s, _ = self.lsock.accept()
            except OSError:
                continue
            c = FakeConn(s, self)
            self.conns.append(c)
            t = threading.Thread(target=self._run, args=(c,), daemon=True)
            self.threads.append(t)
            t.start()

    def _run(self, c):
        try:
            self.script(c)
        except Exception as e:  # kept for check()
            self.errors.append(e)
        finally:
            self.finished += 1
            self.done.set()

    def wait_conns(self, n=1, timeout=10):
        wait_until(lambda: len(self.conns) >= n, timeout, what="%d upstream connections" % n)

    def wait_finished(self, n=1, timeout=15):
        wait_until(lambda: self.finished >= n, timeout, what="%d fake scripts finished" % n)

    def check(self):
        if self.errors:
            raise self.errors[0]

    def close(self):
        self._stop = True
        self.acceptor.join(2)
        self.lsock.close()
        for c in self.conns:
            c.close()
        for t in self.threads:
            t.join(2)


def tricky_messages():
    """(name, stored bytes) of messages that break naive relays."""
    return [
        ("dot-lines", message("dots", b"first\n.\n..two dots\n.leading dot\n. space\nlast\n",
                              eol=b"\n")),
        ("only-dot-line", message("onlydot", b".\n", eol=b"\r\n")),
        ("long-lines", message("long", b"x" * 5000 + b"\n." + b"y" * 1200 + b"\n"
                               + b"z" * 998 + b"\n" + b"w" * 100000 + b"\n")),
        ("8bit", message("8bit", "gr\u00fc\u00dfe \u00e9t\u00e9\n".encode("latin-1")
                         + bytes(range(0x80, 0x100)) + b"\n" + "\u65e5\u672c\n".encode())),
        ("empty-body", message("emptybody", b"")),
        ("empty-message", b""),
        ("no-final-newline", message("nofinal", b"no newline at the end")),
        ("starts-with-ok", b"+OK this is not a status line\r\n\r\n+OK\r\n-ERR\r\n.\r\n"),
        ("terminator-lookalike", message("term", b"a\n.\nb\n.\r\n\r\n.\n")),
        ("bare-cr", message("barecr", b"one\rtwo\r\nthree\r\r\n")),
        ("nul-bytes", message("nul", b"before\0after\n\0\n")),
        ("headers-only-crlf", b"Subject: only\r\n"),
    ]
