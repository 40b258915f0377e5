# Filter author kit: pop3filter-test --conformance against the reference
# filter and every example; each filter's behaviour through the replay tool.
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import REPO, message, wait_until

BIN = REPO / "bin"
TOOL = BIN / "pop3filter-test"
EX = REPO / "examples"
NODE_DIR = EX / "node"

# name -> argv before --socket
FILTERS = {
    "ref": [BIN / "pop3filter-ref"],
    "python": [EX / "python" / "spam_tagger.py"],
    "perl": [EX / "perl" / "block_senders.pl"],
    "node": [EX / "node" / "list_tagger.js"],
    "ruby": [EX / "ruby" / "strip_headers.rb"],
}


def npm_ci():
    """The Node example's pinned dependencies (package-lock.json)."""
    if (NODE_DIR / "node_modules" / "@msgpack" / "msgpack").is_dir():
        return
    r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                       capture_output=True, timeout=300)
    assert r.returncode == 0, "npm ci failed:\n%s" % (r.stdout + r.stderr).decode(errors="replace")


class Filter:
    """A filter program on a UNIX socket in a short temp dir."""

    def __init__(self, procs, name, sock, extra=()):
        if name == "node":
            npm_ci()
        self.name, self.sock = name, str(sock)
        self.proc = procs.spawn(list(FILTERS[name]) + ["--socket", self.sock] + list(extra),
                                "filter-" + name)
        wait_until(lambda: self.proc.poll() is not None or connectable(self.sock), 15,
                   what="%s listening on %s" % (name, self.sock))
        assert self.proc.poll() is None, "%s exited: %s" % (name, self.log())

    def log(self):
        return Path(self.proc.log_path).read_text(errors="replace")

    def stop(self, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def connectable(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.fixture
def start_filter(procs, wtmp):
    started = []

    def start(name, extra=(), sock=None):
        f = Filter(procs, name, sock or wtmp / ("%s-%d.sock" % (name, len(started))), extra)
        started.append(f)
        return f
    yield start
    for f in started:
        if f.proc.poll() is None:
            assert f.stop() == 0, "%s did not exit 0 on SIGTERM:\n%s" % (f.name, f.log())


def tool(procs, *args, timeout=120):
    return procs.run([TOOL] + [str(a) for a in args], "pop3filter-test", timeout=timeout)


# --------------------------------------------------------------------------
# conformance

@pytest.mark.parametrize("name", list(FILTERS))
def test_conformance(name, start_filter, procs):
    f = start_filter(name)
    rc, out = tool(procs, "--socket", f.sock, "--conformance", "--pid", f.proc.pid,
                   "--large-cap", 8 << 20)
    assert rc == 0, out
    fails = [l for l in out.splitlines() if l.startswith("FAIL")]
    assert not fails, out
    # Every check ran, drain included, and the filter then exited 0.
    assert "PASS drain:" in out and "PASS split-request:" in out and "PASS malformed:" in out
    n_pass = sum(1 for l in out.splitlines() if l.startswith("PASS"))
    assert n_pass >= 30, out
    assert f.proc.wait(10) == 0, f.log()


BROKEN = r'''
import socket, struct, sys, msgpack
# Acks hello but never answers ping, and echoes the body on accept.
path = sys.argv[sys.argv.index("--socket") + 1]
s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(16)
def frame(m):
    d = msgpack.packb(m, use_bin_type=True); return struct.pack(">I", len(d)) + d
while True:
    c, _ = s.accept(); c.settimeout(5); buf = b""
    try:
        while True:
            d = c.recv(65536)
            if not d: break
            buf += d
            while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                n = struct.unpack(">I", buf[:4])[0]; raw, buf = buf[4:4 + n], buf[4 + n:]
                try: m = msgpack.unpackb(raw, raw=False, strict_map_key=False)
                except Exception: continue
                if not isinstance(m, dict): continue
                if m.get("type") == "hello":
                    c.sendall(frame({"type": "hello_ack", "version": 1, "filter": "broken",
                        "commands": ["retr"], "actions": [], "max_message_size": 0,
                        "max_frame": 1 << 20, "max_inflight": 4}))
                elif m.get("type") == "request":
                    c.sendall(frame({"type": "verdict", "id": m["id"], "action": "accept",
                        "body": m["body"]}))
    except OSError: pass
    c.close()
'''


def test_conformance_catches_a_broken_filter(procs, wtmp):
    script = wtmp / "broken.py"
    script.write_text(BROKEN)
    sock = wtmp / "broken.sock"
    p = procs.spawn([sys.executable, script, "--socket", sock], "broken-filter")
    wait_until(lambda: connectable(str(sock)), 10, what="broken filter")
    rc, out = tool(procs, "--socket", sock, "--conformance", "--timeout", "1")
    assert rc == 1, out
    assert "PASS handshake:" in out
    for check in ("FAIL version-none", "FAIL ping", "FAIL split-request", "FAIL malformed"):
        assert check in out, out
    assert out.rstrip().splitlines()[-1].startswith("conformance: ")
    p.kill()


def test_tool_refuses_bad_usage_and_dead_socket(procs, wtmp):
    rc, out = tool(procs, "--conformance")
    assert rc == 2 and "usage" in out
    rc, out = tool(procs, "--socket", wtmp / "nothing.sock", "--conformance")
    assert rc == 1 and "connect" in out


# --------------------------------------------------------------------------
# what each filter does, through the replay tool

SPAM = message("cheap pills", b"buy now\n", extra_headers=[b"X-Spam-Flag: YES"])
HAM = message("lunch", b"at noon?\n")
LIST = message("digest", b"news\n", extra_headers=[b"List-Id: Example users <users.lists.example.org>"])
BLOCKED = message("win", b"you won\n").replace(b"From: sender@example.org",
                                                 b"From: Lucky <promo@spam.example>")
LEAKY = message("hello", b"hi\n", extra_headers=[b"X-Originating-IP: [192.0.2.9]",
                                                 b"X-Originating-IP: [192.0.2.10]"])


def attachment(filename_header):
    return (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: invoice\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n"
            b"--zz\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            b"--zz\r\nContent-Type: application/octet-stream\r\n" + filename_header +
            b"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--zz--\r\n")


EXE_2231 = attachment(b"Content-Disposition: attachment;\r\n filename*=UTF-8''inv%6Fice.ex%65")
PDF = attachment(b"Content-Disposition: attachment; filename=\"invoice.pdf\"")

RULES = """\
# pop3filter-ref rules for the tests
tag "[SPAM] " X-Spam-Flag ^yes
reject-attachment *.exe *.scr
notice Withheld by the test rules: attachment
"""


def replay(procs, f, wtmp, name, data):
    path = wtmp / name
    path.write_bytes(data)
    rc, out = tool(procs, "--socket", f.sock, "--show", path)
    assert rc == 0, out
    assert out.startswith("negotiated: version 1"), out
    return out


def result(out):
    """The message text between the --show markers."""
    start = out.index("what the client would get -----\n") + len("what the client would get -----\n")
    return out[start:out.index("----- end ", start)]


def test_ref_default_adds_trace_header(start_filter, procs, wtmp):
    f = start_filter("ref")
    out = result(replay(procs, f, wtmp, "ham.eml", HAM))
    host = socket.gethostname()
    assert "X-POP3Filter-Ref: checked by pop3filter-ref on %s\r\n" % host in out
    assert out.endswith("at noon?\r\n") and out.count("X-POP3Filter-Ref") == 1


def test_ref_rules_tag_reject_and_quarantine(start_filter, procs, wtmp):
    conf = wtmp / "ref.conf"
    conf.write_text(RULES)
    qdir = wtmp / "quarantine"
    qdir.mkdir()
    f = start_filter("ref", ["--config", conf, "--quarantine", qdir])
    out = replay(procs, f, wtmp, "spam.eml", SPAM)
    assert "Subject: [SPAM] cheap pills\r\n" in result(out) and "tags=tagged" in out
    # A second pass does not tag twice.
    tagged = result(out).encode()
    assert "Subject: [SPAM] cheap pills\r\n" in result(replay(procs, f, wtmp, "again.eml", tagged))
    assert "[SPAM] [SPAM]" not in result(replay(procs, f, wtmp, "again.eml", tagged))
    assert "[SPAM]" not in result(replay(procs, f, wtmp, "ham.eml", HAM))
    # An RFC 2231-encoded .exe name: rejected, kept in the quarantine.
    out = replay(procs, f, wtmp, "exe.eml", EXE_2231)
    assert ": reject" in out and 'invoice.exe' in out and "Withheld by the test rules" in out
    qid = out.split('quarantine_id="')[1].split('"')[0]
    kept = qdir / (qid + ".eml")
    assert kept.read_bytes() == EXE_2231
    assert not list(qdir.glob(".tmp-*"))
    # A harmless attachment is accepted.
    assert ": accept" in replay(procs, f, wtmp, "pdf.eml", PDF)


def test_ref_without_quarantine_dir_lets_the_proxy_keep_it(start_filter, procs, wtmp):
    f = start_filter("ref", ["--reject-attachment", "*.EXE", "--no-trace"])
    out = replay(procs, f, wtmp, "exe.eml", EXE_2231)
    assert ": reject" in out and "quarantine_id" not in out
    out = replay(procs, f, wtmp, "ham.eml", HAM)
    assert ": accept\n" in out and "X-POP3Filter-Ref" not in out


def test_ref_unwritable_quarantine_tempfails(start_filter, procs, wtmp):
    qdir = wtmp / "q-gone"
    qdir.mkdir()
    f = start_filter("ref", ["--reject-attachment", "*.exe", "--quarantine", qdir])
    qdir.rmdir()
    out = replay(procs, f, wtmp, "exe.eml", EXE_2231)
    assert ": tempfail" in out and "reject" not in out.split("\n")[1]


def test_ref_refuses_live_socket_and_replaces_stale(start_filter, procs, wtmp):
    sock = wtmp / "shared.sock"
    first = start_filter("ref", sock=sock)
    rc, out = procs.run([BIN / "pop3filter-ref", "--socket", sock], "ref-second", timeout=10)
    assert rc != 0 and "another filter" in out
    first.proc.kill()
    first.proc.wait(5)
    assert sock.exists()            # left behind by the crash
    again = start_filter("ref", sock=sock)
    assert "removed stale socket" in again.log()
    rc, out = procs.run([BIN / "pop3filter-ref", "--socket", sock, "--config", wtmp / "none"],
                        "ref-bad-config", timeout=10)
    assert rc == 2 and "cannot open" in out


def test_ref_bad_config_is_refused(procs, wtmp):
    conf = wtmp / "bad.conf"
    conf.write_text("tag \"x\" Subject ((\n")
    rc, out = procs.run([BIN / "pop3filter-ref", "--socket", wtmp / "x.sock", "--config", conf],
                        "ref-bad", timeout=10)
    assert rc == 2 and "bad.conf" in out


EXAMPLE_CASES = [
    ("python", SPAM, lambda o: "Subject: [SPAM] cheap pills\r\n" in result(o)),
    ("python", HAM, lambda o: "X-Spam-Tagger: checked\r\n" in result(o) and "[SPAM]" not in result(o)),
    ("perl", BLOCKED, lambda o: ": reject" in o and "promo@spam.example" in o and "is blocked" in o),
    ("perl", HAM, lambda o: "X-Sender-Check: passed\r\n" in result(o)),
    ("node", LIST, lambda o: "X-List: users.lists.example.org\r\n" in result(o)),
    ("node", HAM, lambda o: ": accept" in o and "X-List" not in result(o)),
    ("ruby", LEAKY, lambda o: "X-Originating-IP:" not in result(o)
     and "X-Stripped: X-Originating-IP\r\n" in result(o)),
    ("ruby", HAM, lambda o: result(o).encode() == HAM),
]


@pytest.mark.parametrize("name,data,check", EXAMPLE_CASES,
                         ids=["%s-%d" % (c[0], i) for i, c in enumerate(EXAMPLE_CASES)])
def test_example_behaviour(name, data, check, start_filter, procs, wtmp):
    f = start_filter(name)
    out = replay(procs, f, wtmp, "m.eml", data)
    assert check(out), out


def test_replay_maildir_many_in_flight(start_filter, procs, wtmp):
    md = wtmp / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    for i in range(40):
        (md / ("new" if i % 2 else "cur") / ("%03d.eml" % i)).write_bytes(
            message("m%d" % i, b"body %d\n" % i, eol=b"\n"))
    f = start_filter("python")
    rc, out = tool(procs, "--socket", f.sock, "--inflight", 8, md)
    assert rc == 0, out
    assert "replay: 40 message(s), 40 answered, 0 protocol error(s)" in out
    assert out.count(": accept") == 40


ASYNC_FILTER = r'''
import asyncio, os, sys
sys.path.insert(0, %r)
import pop3filter as pf

async def on_message(req):
    # A slow lookup for "slow" messages: others must not wait behind it.
    if req.header("Subject") == "slow":
        await asyncio.sleep(1.0)
    return pf.accept(pf.add_header("X-Async", req.header("Subject")))

pf.main("async-example/1.0", on_message, actions=["edit_headers"])
'''


def test_python_async_handler_answers_out_of_order(procs, wtmp):
    """A coroutine handler waiting on something slow holds up only its own
    message: the fast ones behind it are answered first."""
    script = wtmp / "async_filter.py"
    script.write_text(ASYNC_FILTER % str(EX / "python"))
    sock = wtmp / "async.sock"
    p = procs.spawn([sys.executable, script, "--socket", sock], "async-filter")
    wait_until(lambda: connectable(str(sock)), 10, what="async filter")
    files = []
    for i, subj in enumerate(["slow", "fast1", "fast2"]):
        files.append(wtmp / ("%d.eml" % i))
        files[-1].write_bytes(message(subj, b"x\n"))
    t0 = time.monotonic()
    rc, out = tool(procs, "--socket", sock, *files)
    assert rc == 0, out
    answers = [l for l in out.splitlines() if ": accept" in l]
    assert [a.split("/")[-1].split(":")[0] for a in answers] == ["1.eml", "2.eml", "0.eml"], out
    assert time.monotonic() - t0 < 5
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
