#!/usr/bin/python3
# scripts/bench.py: `make bench` and `make bench-quick`: runs pop3load against
# direct, pop3proxyd, nginx mail and perdition on loopback, prints Markdown.
"""The benchmark driver.

Invariants:
- only 127.0.0.0/8 is used; pop3proxyd gets --dns-server 127.0.0.1:1;
- every program is started in its own process group and stopped by its id;
- every number comes from pop3load, which checks every message byte for
  byte (or, behind a filter, as the original plus added header lines); a
  run with any error is shown as an error, never as a number;
- targets are measured interleaved, round by round, and each ratio is the
  median of per-round ratios, so drift on a shared machine hits all alike.
"""

import argparse
import datetime
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "bin"
DOC = ROOT / "docs" / "BENCHMARKS.md"
NOFILE = 65536
# The hard limit this process got; without CAP_SYS_RESOURCE it cannot grow.
HARD_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
KB, MB = 1000, 1000 * 1000
SIZES = {"2 KB": 2 * KB, "50 KB": 50 * KB, "1 MB": MB}
COUNTS = {2 * KB: 200, 50 * KB: 50, MB: 8, 100 * KB: 30}
PIPELINE = 4
BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def raise_nofile():
    # 10,000 sessions are 20,000 sockets in a proxy: raise the hard limit
    # where we may (root with CAP_SYS_RESOURCE), else the soft one to it.
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    except (ValueError, OSError):
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def max_nofile():
    raise_nofile()
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def can_connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


class Server:
    """A program in its own process group, logging to a file."""

    def __init__(self, name, argv, tmp, port=None):
        self.name, self.port = name, port
        self.logpath = Path(tmp) / (name + ".log")
        self.logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf,
                                     preexec_fn=raise_nofile, start_new_session=True)
        if port is not None:
            deadline = time.time() + 10
            while not can_connect(port):
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("%s did not start: %s" % (name, self.tail()))
                time.sleep(0.05)

    def tail(self):
        try:
            return self.logpath.read_text(errors="replace")[-600:]
        except OSError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def pids(self):
        """The process and its descendants (nginx workers, perdition children)."""
        kids = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    st = Path("/proc/%s/stat" % d).read_text()
                    ppid = int(st.rsplit(")", 1)[1].split()[1])
                    kids.setdefault(ppid, []).append(int(d))
                except (OSError, IndexError, ValueError):
                    pass
        out, todo = [], [self.proc.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(kids.get(p, []))
        return out

    def memory_kb(self):
        """Proportional set size of the whole process tree, in KiB: PSS counts
        shared pages once, so a forking server is not charged N times for
        its libraries."""
        total = 0
        for p in self.pids():
            try:
                for line in open("/proc/%d/smaps_rollup" % p):
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
            except OSError:
                pass
        return total

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(5)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        self.logf.close()


def parse_result(text):
    for line in text.splitlines():
        if line.startswith("result "):
            return {k: (float(v) if re.fullmatch(r"[0-9.]+", v) else v)
                    for k, v in (kv.split("=", 1) for kv in line.split()[1:])}
    return None


def pop3load(port, user, size, sessions=1, duration=2.0, pipeline=PIPELINE,
             verify="exact", top_every=8, extra=(), timeout=None):
    argv = [BIN / "pop3load", "--connect", "127.0.0.1:%d" % port, "--user", user,
            "--sessions", sessions, "--duration", duration, "--pipeline", pipeline,
            "--size", size, "--count", COUNTS[size], "--verify", verify,
            "--top-every", top_every] + list(extra)
    if timeout is not None:
        argv += ["--timeout", timeout]
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                       preexec_fn=raise_nofile, timeout=duration + 180)
    r = parse_result(p.stdout) or {"errors": 1.0, "failed": float(sessions)}
    r["rc"] = p.returncode
    r["stderr"] = p.stderr.strip()[-400:]
    if r["stderr"]:
        log("   pop3load:", r["stderr"].replace("\n", " | ")[:300])
    return r


def ok(r):
    return r is not None and r["rc"] == 0 and r.get("errors", 1) == 0 and r.get("failed", 1) == 0


# --------------------------------------------------------------------------
# the systems under test

class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="pop3bench.")
        os.chmod(self.tmp, 0o755)   # Dovecot's unprivileged users read in it
        self.servers = []
        self.memd = {}      # size -> port
        self.notes = []

    def start(self, name, argv, port=None):
        s = Server(name, argv, self.tmp, port)
        self.servers.append(s)
        return s

    def close(self):
        for s in reversed(self.servers):
            s.stop()
        if os.environ.get("BENCH_KEEP"):
            log("bench: kept", self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def start_memd(self, size):
        if size not in self.memd:
            port = free_port()
            self.start("memd-%d" % size, [BIN / "pop3memd", "--listen", "127.0.0.1:%d" % port,
                                           "--size", size, "--count", COUNTS[size]], port)
            self.memd[size] = port
        return self.memd[size]

    def start_proxy(self, name="pop3proxyd", extra=()):
        port = free_port()
        s = self.start(name, [BIN / "pop3proxyd", "--listen", "127.0.0.1:%d" % port,
                              "--allow-upstream", "127.0.0.1:*", "--dns-server", "127.0.0.1:1",
                              "--log-level", "warn", "--max-sessions", 20000,
                              # unprivileged, as nginx's workers and perdition
                              "--user", "nobody",
                              "--max-sessions-per-ip", 0] + list(extra), port)
        return s

    def start_nginx(self):
        d = Path(self.tmp) / "nginx"
        d.mkdir(exist_ok=True)
        auth, port = free_port(), free_port()
        # nginx answers its own auth_http: the user name "b<port>" names
        # the upstream port, the nearest thing to our user%host:port.
        (d / "nginx.conf").write_text(f"""\
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
worker_processes 1;
worker_rlimit_nofile {max_nofile()};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  map $http_auth_user $bench_port {{ ~^b(?<p>[0-9]+)$ $p; default 1; }}
  server {{
    listen 127.0.0.1:{auth};
    location = /auth {{
      add_header Auth-Status OK;
      add_header Auth-Server 127.0.0.1;
      add_header Auth-Port $bench_port;
      return 204;
    }}
  }}
}}
mail {{
  auth_http 127.0.0.1:{auth}/auth;
  proxy_buffer 64k;
  server {{ listen 127.0.0.1:{port}; protocol pop3; proxy on; pop3_auth plain; }}
}}
""")
        return self.start("nginx", ["nginx", "-c", d / "nginx.conf", "-p", d], port)

    def start_perdition(self):
        port = free_port()
        return self.start("perdition", ["/usr/sbin/perdition.pop3", "-f", "/dev/null",
                                        "--no_daemon", "--protocol", "POP3", "-c", "-n",
                                        "--ssl_mode", "none", "-q", "-F", "+",
                                        "-b", "127.0.0.1:%d" % port,
                                        "--pid_file", Path(self.tmp) / "perdition.pid"], port)

    def targets(self):
        """name -> (port, user function of the upstream port)."""
        t = {"direct": (None, lambda up: "bench")}
        px = self.start_proxy()
        t["pop3proxyd"] = (px.port, lambda up: "bench%%127.0.0.1:%d" % up)
        if shutil.which("nginx") and Path("/usr/lib/nginx/modules/ngx_mail_module.so").exists():
            t["nginx"] = (self.start_nginx().port, lambda up: "b%d" % up)
        else:
            self.notes.append("nginx mail module not installed: run scripts/bench-setup.sh")
        if Path("/usr/sbin/perdition.pop3").exists():
            t["perdition"] = (self.start_perdition().port, lambda up: "bench@127.0.0.1:%d" % up)
        else:
            self.notes.append("perdition not installed: run scripts/bench-setup.sh")
        return t


def cell_ratio(ratios, mbps, errs):
    if errs:
        return "**ERRORS** (%s)" % errs
    if not ratios:
        return "n/a"
    return "%.2f (%.0f MB/s)" % (statistics.median(ratios), statistics.median(mbps))


def fmt_err(r):
    return "errors=%d failed=%d" % (r.get("errors", 0), r.get("failed", 0))


# --------------------------------------------------------------------------
# scenario 1: bulk retrieval

def scenario_relay(b, t, a):
    names = list(t)
    rows = []
    for label, size in SIZES.items():
        up = b.start_memd(size)
        for sessions in (1, 50):
            mb = {n: [] for n in names}
            ratios = {n: [] for n in names}
            errs = {n: "" for n in names}
            lat = {n: [] for n in names}
            for rnd in range(a.runs):
                got = {}
                for n in names:
                    port, user = t[n]
                    r = pop3load(port or up, user(up), size, sessions, a.duration)
                    if not ok(r):
                        errs[n] = fmt_err(r)
                        continue
                    got[n] = r["mbps"]
                    mb[n].append(r["mbps"])
                    lat[n].append(r["p99_us"])
                if "direct" in got:
                    for n in got:
                        ratios[n].append(got[n] / got["direct"])
            row = ["%d session%s, %s" % (sessions, "s" if sessions > 1 else "", label)]
            for n in names:
                if n == "direct":
                    row.append(errs[n] and "**ERRORS** (%s)" % errs[n] or
                               "%.0f MB/s" % statistics.median(mb[n]))
                else:
                    row.append(cell_ratio(ratios[n], mb[n], errs[n]))
            rows.append(row)
            log(" ", " | ".join(row))
    head = ["Scenario 1: relay throughput"] + [
        "direct" if n == "direct" else "%s (ratio to direct)" % n for n in names]
    return table(head, rows)


# --------------------------------------------------------------------------
# scenario 3: idle sessions and memory

def hold_idle(port, user, sessions, hold_s=120):
    """Open and log in `sessions` sessions; return (held, failed, proc) once
    they are all in, the pop3load process still holding them."""
    argv = [BIN / "pop3load", "--connect", "127.0.0.1:%d" % port, "--user", user,
            "--mode", "idle", "--sessions", sessions, "--sources", 32,
            "--concurrency", 200, "--hold", hold_s, "--size", 2 * KB, "--count", 1]
    p = subprocess.Popen([str(x) for x in argv], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=raise_nofile)
    line = p.stdout.readline()
    m = re.match(r"holding held=(\d+) failed=(\d+)", line)
    if not m:
        return 0, sessions, p
    return int(m.group(1)), int(m.group(2)), p


def release_idle(p):
    try:
        p.stdin.write("go\n")
        p.stdin.flush()
    except (BrokenPipeError, OSError):
        pass
    out, err = p.communicate(timeout=120)
    r = parse_result(out) or {"errors": 1.0, "failed": 1.0, "noop_ok": 0}
    r["rc"] = p.returncode
    if err.strip():
        log("   pop3load:", err.strip().replace("\n", " | ")[:300])
    return r


def scenario_idle(b, t, a):
    up = b.start_memd(2 * KB)
    rows = []
    for n in t:
        if n == "direct":
            continue
        port, user = t[n]
        srv = next(s for s in b.servers if s.port == port)
        want = a.idle
        if n == "perdition":
            # perdition forks one process per session: 10,000 of them
            # would measure the machine's process table, not the proxy.
            want = min(a.idle, a.idle_perdition)
        time.sleep(0.5)
        base = srv.memory_kb()
        t0 = time.time()
        held, failed, p = hold_idle(port, user(up), want)
        secs = time.time() - t0
        time.sleep(1.0)    # let the last logins settle
        mem = srv.memory_kb()
        alive = srv.alive()
        r = release_idle(p)
        per = (mem - base) * 1024 / held if held else 0
        noop = int(r.get("noop_ok", 0))
        bad = failed or r.get("errors", 0) or noop != held or not alive
        rows.append([n, "%d" % want, "%d" % held,
                     "%d" % noop,
                     "%d" % (failed + int(r.get("errors", 0))),
                     "%.1f s" % secs,
                     "%.0f MB" % (mem / 1024), "%.1f KB" % (per / 1000)
                     if not bad else "**ERRORS** (%.1f KB)" % (per / 1000)])
        log(" ", " | ".join(rows[-1]))
        time.sleep(1.0)
    note = "_Note: %s._\n\n" % a.idle_note if a.idle_note else ""
    return note + table(["Scenario 3: idle logged-in sessions", "opened", "held",
                  "alive at the end (NOOP +OK)", "errors", "time to log in all",
                  "memory held (PSS)", "memory per session"], rows)


# --------------------------------------------------------------------------
# the filter scenarios (2, 4, 5): only with a working filter path

def filter_ready(b):
    """Returns None when the filter path works, else why not."""
    ref = BIN / "pop3filter-ref"
    if not ref.exists():
        return "bin/pop3filter-ref does not exist yet"
    sock = Path(b.tmp) / "probe.sock"
    try:
        f = b.start("filter-probe", [ref, "--socket", sock, "--socket-mode", "666"])
        deadline = time.time() + 5
        while not sock.exists() and f.alive() and time.time() < deadline:
            time.sleep(0.05)
        if not sock.exists():
            return "pop3filter-ref did not create its socket: " + f.tail()[-200:]
        try:
            px = b.start_proxy("proxy-probe", ["--filter", "unix:%s" % sock])
        except RuntimeError as e:
            return "pop3proxyd refuses --filter: %s" % str(e)[-200:]
        time.sleep(0.3)
        if not px.alive():
            return "pop3proxyd with --filter exited: " + px.tail()[-200:]
        px.stop()
        f.stop()
        return None
    except Exception as e:  # noqa: BLE001 - reported in the table as the reason
        return "filter probe failed: %s" % e


def filter_modes():
    """pop3filter-ref's arguments per mode, read from its --help; None for a
    mode it does not offer (shown as such, never measured as something else).
    accept: a bare accept, nothing sent back; trace: accept with one header
    added (its default); replace: the whole message sent back."""
    try:
        h = subprocess.run([str(BIN / "pop3filter-ref"), "--help"], capture_output=True,
                           text=True, timeout=5)
        text = h.stdout + h.stderr
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    modes = {"accept": None, "trace header": [], "replace": None}
    if "--no-trace" in text:
        modes["accept"] = ["--no-trace"]
    for f in ("--replace", "--rewrite"):
        if re.search(re.escape(f) + r"\b", text):
            modes["replace"] = [f]
    return modes


def start_filter(b, args, name="filter"):
    sock = Path(b.tmp) / (name + ".sock")
    if sock.exists():
        sock.unlink()
    # The proxy runs as nobody: the socket must be open to it.
    f = b.start(name, [BIN / "pop3filter-ref", "--socket", sock, "--socket-mode", "666"]
                + list(args))
    deadline = time.time() + 5
    while not sock.exists() and time.time() < deadline:
        time.sleep(0.02)
    return f, sock


def scenario_filter(b, a, why):
    head = ["Scenario 2: filter path (pop3filter-ref)", "throughput ratio to unfiltered proxy",
            "added latency p50", "added latency p99"]
    if why:
        rows = [["%s, %s" % (m, s), "not available yet", "not available yet",
                 "not available yet"] for m in ("accept", "trace header", "replace")
                for s in ("2 KB", "50 KB", "100 KB")]
        return table(head, rows) + "\n\nNot available yet: %s.\n" % why
    modes = filter_modes()
    rows = []
    sizes = ((2 * KB, "2 KB"), (50 * KB, "50 KB"), (100 * KB, "100 KB"))
    for size, label in sizes[:2] if a.quick else sizes:
        up = b.start_memd(size)
        plain = b.start_proxy("proxy-plain-%d" % size)
        base_tp, base_lat = [], None
        results = {}
        for mode, args in modes.items():
            if args is None:
                results[mode] = None
                continue
            f, sock = start_filter(b, args, "filter-%s-%d" % (mode, size))
            px = b.start_proxy("proxy-%s-%d" % (mode, size), ["--filter", "unix:%s" % sock])
            tp, errs = [], ""
            for rnd in range(a.runs):
                r0 = pop3load(plain.port, "bench%%127.0.0.1:%d" % up, size, 50, a.duration,
                              verify="headers")
                r1 = pop3load(px.port, "bench%%127.0.0.1:%d" % up, size, 50, a.duration,
                              verify="headers")
                if not ok(r0) or not ok(r1):
                    errs = fmt_err(r1 if not ok(r1) else r0)
                    continue
                base_tp.append(r0["mbps"])
                tp.append(r1["mbps"] / r0["mbps"])
            if base_lat is None:
                base_lat = pop3load(plain.port, "bench%%127.0.0.1:%d" % up, size, 1,
                                    a.duration, pipeline=1, top_every=0, verify="headers")
            lat = pop3load(px.port, "bench%%127.0.0.1:%d" % up, size, 1, a.duration,
                           pipeline=1, top_every=0, verify="headers")
            results[mode] = (tp, errs, lat)
            px.stop()
            f.stop()
        for mode in modes:
            row = ["%s, %s" % (mode, label)]
            if results.get(mode) is None:
                row += ["not available yet (pop3filter-ref has no %s mode)" % mode, "", ""]
            else:
                tp, errs, lat = results[mode]
                if errs or not ok(lat) or not ok(base_lat):
                    row += ["**ERRORS** (%s)" % (errs or fmt_err(lat)), "", ""]
                else:
                    row += ["%.2f" % statistics.median(tp),
                            "%d µs" % (lat["p50_us"] - base_lat["p50_us"]),
                            "%d µs" % (lat["p99_us"] - base_lat["p99_us"])]
            rows.append(row)
            log(" ", " | ".join(row))
        plain.stop()
    return table(head, rows)


def scenario_budget(b, a, why):
    head = ["Scenario 4: 500 sessions of 1 MB messages through a filter",
            "buffer budget", "peak memory (PSS) over idle", "peak / budget", "errors"]
    if why:
        return table(head, [["500 sessions, 1 MB", "not available yet", "not available yet",
                             "not available yet", "not available yet"]])
    budget = 64 * 1024 * 1024
    up = b.start_memd(MB)
    f, sock = start_filter(b, [], "filter-budget")
    px = b.start_proxy("proxy-budget", ["--filter", "unix:%s" % sock,
                                        "--buffer-budget", str(budget)])
    time.sleep(0.3)
    base = px.memory_kb()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], px.memory_kb())
            time.sleep(0.05)
    th = threading.Thread(target=sample)
    th.start()
    r = pop3load(px.port, "bench%%127.0.0.1:%d" % up, MB, a.budget_sessions,
                 a.duration * 2, pipeline=1, top_every=0, verify="headers",
                 timeout=a.duration * 2 + (10 if a.quick else 30))
    stop.set()
    th.join()
    px.stop()
    f.stop()
    over = (peak[0] - base) * 1024
    row = ["%d sessions, 1 MB" % a.budget_sessions, "%d MiB" % (budget >> 20),
           "%.0f MiB" % (over / 1048576), "%.2f" % (over / budget),
           "0" if ok(r) else "**%s**" % fmt_err(r)]
    log(" ", " | ".join(row))
    return table(head, [row])


def scenario_restart(b, a, why):
    head = ["Scenario 5: filter killed and restarted 5 times", "sessions", "sessions dropped",
            "messages delivered", "of which marked unfiltered", "check errors"]
    if why:
        return table(head, [["50 sessions, 50 KB, accept"] + ["not available yet"] * 5])
    up = b.start_memd(50 * KB)
    f, sock = start_filter(b, [], "filter-restart")
    px = b.start_proxy("proxy-restart", ["--filter", "unix:%s" % sock])
    dur = 3.0 if a.quick else 8.0
    res = {}

    def run():
        res["r"] = pop3load(px.port, "bench%%127.0.0.1:%d" % up, 50 * KB, 50, dur,
                            verify="headers")
    th = threading.Thread(target=run)
    th.start()
    for i in range(5):
        time.sleep(dur / 6)
        f.stop(signal.SIGKILL)
        time.sleep(0.1)
        f, sock = start_filter(b, [], "filter-restart")
    th.join()
    px.stop()
    f.stop()
    r = res["r"]
    row = ["50 sessions, 50 KB", "50", "%d" % int(r.get("failed", 50)), "%d" % int(r.get("msgs", 0)),
           "%d" % int(r.get("marked", 0)), "%d" % int(r.get("errors", 0))]
    log(" ", " | ".join(row))
    return table(head, [row])


# --------------------------------------------------------------------------
# real Dovecot: the same corpus served from a Maildir

def scenario_dovecot(b, t, a):
    if not shutil.which("dovecot"):
        return "Dovecot is not installed: no row against a real server.\n"
    import pwd
    size = 50 * KB
    root = Path(b.tmp) / "dovecot"
    md = root / "mail" / "bench" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN / "pop3load"), "--write-maildir", str(md), "--size", str(size),
                    "--count", str(COUNTS[size])], check=True)
    pw = pwd.getpwnam("nobody")
    for dirpath, dirs, files in os.walk(root / "mail"):
        for x in [dirpath] + [os.path.join(dirpath, f) for f in files]:
            os.chown(x, pw.pw_uid, pw.pw_gid)
    port = free_port()
    (root / "b").mkdir()
    # nginx passes its login name ("b<port>") on: both names read one box.
    (root / "passwd").write_text("bench:{PLAIN}x::::::\nb%d:{PLAIN}x::::::\n" % port)
    (root / "dovecot.conf").write_text(f"""\
protocols = pop3
listen = 127.0.0.1
base_dir = {root}/b
state_dir = {root}
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
auth_failure_delay = 0
first_valid_uid = 1
default_internal_user = dovenull
default_login_user = dovenull
mail_uid = nobody
mail_gid = {pw.pw_gid}
mail_location = maildir:{md}
mail_fsync = never
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd
}}
userdb {{
  driver = static
  args = uid={pw.pw_uid} gid={pw.pw_gid} home={root}/mail/bench
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {port}
  }}
  service_count = 0
  process_min_avail = 1
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
""")
    dv = b.start("dovecot", ["dovecot", "-F", "-c", root / "dovecot.conf"], port)
    rows = []
    for sessions in (1, 50):
        mb = {n: [] for n in t}
        ratios = {n: [] for n in t}
        errs = {n: "" for n in t}
        for rnd in range(a.runs):
            got = {}
            for n in t:
                pport, user = t[n]
                u = user(port)
                if n == "direct":
                    u = "bench"
                elif n == "pop3proxyd":
                    u = "bench%%127.0.0.1:%d" % port
                elif n == "perdition":
                    u = "bench@127.0.0.1:%d" % port
                r = pop3load(pport or port, u, size, sessions, a.duration)
                if not ok(r):
                    errs[n] = fmt_err(r)
                    continue
                got[n] = r["mbps"]
                mb[n].append(r["mbps"])
            if "direct" in got:
                for n in got:
                    ratios[n].append(got[n] / got["direct"])
        row = ["Dovecot, %d session%s, 50 KB" % (sessions, "s" if sessions > 1 else "")]
        for n in t:
            if n == "direct":
                row.append(errs[n] and "**ERRORS** (%s)" % errs[n] or
                           "%.0f MB/s" % statistics.median(mb[n]))
            else:
                row.append(cell_ratio(ratios[n], mb[n], errs[n]))
        rows.append(row)
        log(" ", " | ".join(row))
    dv.stop()
    head = ["Against Dovecot 2.3 (Maildir)"] + [
        "direct" if n == "direct" else "%s (ratio to direct)" % n for n in t]
    return table(head, rows)


# --------------------------------------------------------------------------

def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def version(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=5)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def git_rev():
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()


def other_load(t0_load, rev0):
    """What else ran: the load average before and after (on 2 cores any other
    job skews the ratios), and whether HEAD moved during the run (a proxy
    started later may run a newer binary than one started earlier)."""
    l0, l1 = t0_load, os.getloadavg()
    out = "- load average (1/5/15 min) before: %.2f %.2f %.2f, after: %.2f %.2f %.2f" % (l0 + l1)
    rev1 = git_rev()
    if rev1 != rev0:
        out += "; HEAD moved during the run (%s to %s)" % (rev0, rev1)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                            "daemon", "protocol", "clients"],
                           capture_output=True, text=True).stdout.split()[1::2]
    if dirty:
        out += "; built from a working tree with uncommitted changes in %s" % ", ".join(dirty)
    return out + "\n"


def machine():
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    rev = git_rev()
    return ("- date: %s\n- machine: %d CPUs (nproc), %s, Linux %s, %.1f GiB RAM\n"
            "- pop3proxyd: git %s; %s; %s\n" % (
                datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                os.cpu_count(), cpu, platform.release(),
                os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                rev, version(["nginx", "-v"]), version(["/usr/sbin/perdition.pop3", "--help"])))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the under-a-minute variant")
    ap.add_argument("--write", action="store_true", help="write docs/BENCHMARKS.md")
    ap.add_argument("--only", default="1,2,3,4,5,dovecot")
    a = ap.parse_args()
    a.runs, a.duration, a.idle, a.idle_perdition, a.budget_sessions = (
        (1, 0.5, 1000, 500, 100) if a.quick else (3, 2.0, 10000, 2000, 500))
    only = set(a.only.split(","))
    if a.quick and a.only == ap.get_default("only"):
        only.discard("dovecot")     # make bench runs it; a minute is short
    # A proxy holds two descriptors per session: stay under the limit.
    fit = (max_nofile() - 40) // 2
    if a.idle > fit:
        a.idle_note = ("%d sessions, not %d: RLIMIT_NOFILE's hard limit here is %d "
                       "and cannot be raised (no CAP_SYS_RESOURCE), and a proxy needs "
                       "two descriptors per session" % (fit, a.idle, max_nofile()))
        a.idle = fit
    else:
        a.idle_note = None
    for p in ("pop3proxyd", "pop3load", "pop3memd"):
        if not (BIN / p).exists():
            sys.exit("bench: bin/%s is missing: run make first" % p)
    b = Bench(a)
    parts = []
    t0, load0, rev0 = time.time(), os.getloadavg(), git_rev()
    try:
        t = b.targets()
        if "1" in only:
            log("scenario 1: relay throughput")
            parts.append(scenario_relay(b, t, a))
        if "dovecot" in only:
            log("against Dovecot")
            parts.append(scenario_dovecot(b, t, a))
        if "3" in only:
            log("scenario 3: idle sessions")
            parts.append(scenario_idle(b, t, a))
        why = filter_ready(b) if {"2", "4", "5"} & only else None
        if "2" in only:
            log("scenario 2: filter path" + (" (%s)" % why if why else ""))
            parts.append(scenario_filter(b, a, why))
        if "4" in only:
            log("scenario 4: buffer budget")
            parts.append(scenario_budget(b, a, why))
        if "5" in only:
            log("scenario 5: filter restarts")
            parts.append(scenario_restart(b, a, why))
    finally:
        b.close()
    notes = "".join("\n_Note: %s._\n" % n for n in b.notes)
    md = ("%s%s%s\n_%s: %d round(s) of %.1f s per cell, %.0f s in all._\n\n%s" % (
        machine(), other_load(load0, rev0), notes, "bench-quick" if a.quick else "bench", a.runs, a.duration,
        time.time() - t0, "\n".join(parts)))
    print(md)
    if a.write:
        old = DOC.read_text() if DOC.exists() else ""
        block = "%s\n%s\n%s" % (BEGIN, md, END)
        if BEGIN in old and END in old:
            new = old.split(BEGIN)[0] + block + old.split(END, 1)[1]
        else:
            new = old + ("\n" if old else "") + block + "\n"
        DOC.write_text(new)
        log("bench: wrote", DOC.relative_to(ROOT))


if __name__ == "__main__":
    main()
