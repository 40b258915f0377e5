#!/usr/bin/python3
# pyfilter.py: a filter service in Python for the integration tests, speaking
# filter protocol v1 (protocol/PROTOCOL.md) with scriptable, hostile behaviours.
"""A test filter: listens on a UNIX socket, answers the proxy's requests.

What it does with a request is decided by --mode, or per message by an
"X-Test-Action: MODE" header in the message itself (so one session can carry
messages with different fates).  Modes:

  accept        accept unchanged
  edit          accept with header edits: add "X-Filtered: <name>", change
                Subject to "[filtered] <old>", delete every X-Spam-Junk
  replace       replace the body with a short new message
  reject        reject (with --keep-dir: keep the original there and say so
                with quarantine_id)
  tempfail      tempfail
  error         answer an error frame for the request (code "internal")
  silent        never answer
  garbage       send a frame that is not msgpack, then accept
  oversize      send a frame header announcing 2^31 octets (then stall)
  unknown-id    send a verdict for an id never issued, then accept
  not-granted   answer "replace" although only accept was granted
  bad-verdict   answer a verdict with an invalid edit, for that request's id

Connection-level behaviours: --close-after-hello (close right after the
handshake), --version N (answer with that version), --drain-after N (send
drain after N requests and close once they are answered).

Every request is logged as one JSON line to --log: the id, the session and
message facts, the body's length and sha256 -- so a test can check what the
filter saw.
"""

import argparse
import asyncio
import hashlib
import json
import os
import re
import signal
import struct
import sys
import time

import msgpack

MAX_FRAME = 64 << 20


def pack(obj):
    data = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(data)) + data


def header_value(body, name):
    head = body.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    m = re.search(rb"(?im)^" + re.escape(name.encode()) + rb":[ \t]*(.*?)\r?$", head)
    return m.group(1).decode("latin-1").strip() if m else None


class Filter:
    def __init__(self, args):
        self.a = args
        self.nreq = 0
        self.log = open(args.log, "a", buffering=1) if args.log else None

    def note(self, **kw):
        if self.log:
            kw["t"] = time.time()
            self.log.write(json.dumps(kw) + "\n")

    async def serve(self, reader, writer):
        a = self.a
        try:
            await self.conn(reader, writer)
        except asyncio.IncompleteReadError:
            pass
        except Exception as e:
            # A frame this filter cannot parse: say so (tests read this).
            print("pyfilter %s: connection dropped: %r" % (a.name, e), flush=True)
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def read_frame(self, reader):
        hdr = await reader.readexactly(4)
        n = struct.unpack(">I", hdr)[0]
        if n > MAX_FRAME:
            raise ConnectionError("frame too large")
        return msgpack.unpackb(await reader.readexactly(n), raw=False)

    async def conn(self, reader, writer):
        a = self.a
        hello = await self.read_frame(reader)
        self.note(event="hello", hello={k: v for k, v in hello.items()})
        if hello.get("type") != "hello":
            return
        version = a.version if a.version is not None else 1
        if a.version is None and 1 not in hello.get("versions", []):
            writer.write(pack({"type": "error", "code": "version",
                               "message": "I speak version 1 only"}))
            await writer.drain()
            return
        writer.write(pack({
            "type": "hello_ack", "version": version, "filter": "pyfilter/" + a.name,
            "commands": a.commands.split(","),
            "actions": [x for x in a.actions.split(",") if x],
            "max_message_size": a.max_message_size, "max_frame": MAX_FRAME,
            "max_inflight": a.max_inflight,
        }))
        await writer.drain()
        if a.close_after_hello:
            return
        lock = asyncio.Lock()
        tasks = set()
        answered = 0
        conn_req = 0
        drained = False

        async def send(obj_or_bytes):
            async with lock:
                writer.write(obj_or_bytes if isinstance(obj_or_bytes, bytes) else pack(obj_or_bytes))
                await writer.drain()

        async def handle(req):
            nonlocal answered
            try:
                await self.answer(req, send)
            except Exception as e:
                print("pyfilter %s: request %s failed: %r" % (a.name, req.get("id"), e),
                      flush=True)
                raise
            finally:
                answered += 1

        while True:
            if drained and answered >= conn_req:
                return
            try:
                m = await asyncio.wait_for(self.read_frame(reader), 0.2) if drained else \
                    await self.read_frame(reader)
            except asyncio.TimeoutError:
                continue
            t = m.get("type")
            if t == "ping":
                await send({"type": "pong", "id": m["id"]})
            elif t == "cancel":
                self.note(event="cancel", id=m["id"])
            elif t == "request":
                self.nreq += 1
                conn_req += 1
                task = asyncio.ensure_future(handle(m))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if a.drain_after and conn_req == a.drain_after and not drained:
                    await send({"type": "drain", "reason": "test drain"})
                    drained = True
            elif t == "error":
                self.note(event="error", error=m)

    async def answer(self, req, send):
        a = self.a
        body = req["body"]
        rid = req["id"]
        mode = header_value(body, "X-Test-Action") or a.mode
        self.note(event="request", id=rid, session=req["session"],
                  message=req["message"], deadline_ms=req["deadline_ms"],
                  size=len(body), sha256=hashlib.sha256(body).hexdigest(), mode=mode)
        if a.delay:
            await asyncio.sleep(a.delay)
        v = {"type": "verdict", "id": rid}
        if mode == "accept":
            v.update(action="accept", reason="clean", tags=["ham"], score=0.5)
        elif mode == "edit":
            subj = header_value(body, "Subject") or ""
            v.update(action="accept", reason="tagged", tags=["tagged", a.name],
                     edits=[{"op": "add", "name": "X-Filtered", "value": a.name},
                            {"op": "change", "name": "Subject", "value": "[filtered] " + subj},
                            {"op": "delete", "name": "X-Spam-Junk", "index": 0}])
        elif mode == "replace":
            new = ("From: pyfilter@example.org\r\nSubject: replaced by %s\r\n\r\n"
                   "The original had %d octets.\n.leading dot line\nno final newline"
                   % (a.name, len(body))).encode()
            v.update(action="replace", body=new, reason="replaced")
        elif mode == "reject":
            v.update(action="reject", reason="virus found: Test.EICAR",
                     notice="This message carried a virus and was removed.\n"
                            "Contact the helpdesk if you need it.", tags=["virus"])
            if a.keep_dir:
                qid = "pyq-%d-%s" % (rid, hashlib.sha256(body).hexdigest()[:12])
                with open(os.path.join(a.keep_dir, qid), "wb") as f:
                    f.write(body)
                v["quarantine_id"] = qid
        elif mode == "tempfail":
            v.update(action="tempfail", reason="scanner busy")
        elif mode == "error":
            await send({"type": "error", "id": rid, "code": "internal",
                        "message": "scanner crashed"})
            return
        elif mode == "silent":
            return
        elif mode == "garbage":
            await send(struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")
            await send(struct.pack(">I", 3) + b"\x93\x01\x02")   # an array, not a map
            v.update(action="accept")
        elif mode == "oversize":
            await send(struct.pack(">I", 1 << 31) + b"\x80" * 100)
            return
        elif mode == "unknown-id":
            await send({"type": "verdict", "id": rid + 1000000, "action": "accept"})
            v.update(action="accept")
        elif mode == "not-granted":
            v.update(action="replace", body=b"Subject: sneaky\r\n\r\nnot allowed\r\n")
        elif mode == "bad-verdict":
            v.update(action="accept", edits=[{"op": "add", "name": "Bad Name", "value": "x"}])
        else:
            raise SystemExit("unknown mode %r" % mode)
        await send(v)


class FilterProc:
    """Runs this file as a filter service for a test (see tests/integration).

    procs is the harness's ProcessSet, so the filter is killed at teardown
    whatever happens; dirpath must be short (UNIX socket paths).
    """

    def __init__(self, procs, dirpath, name="f1", mode="accept", args=()):
        self.procs = procs
        self.name = name
        self.sock = os.path.join(str(dirpath), name + ".sock")
        self.logfile = os.path.join(str(dirpath), name + ".jsonl")
        self.argv = ["/usr/bin/python3", os.path.abspath(__file__), "--socket", self.sock,
                     "--name", name, "--mode", mode, "--log", self.logfile] + list(args)
        self.proc = None

    @property
    def flag(self):
        return "--filter=unix:" + self.sock

    def start(self, timeout=10):
        import socket as _s
        self.proc = self.procs.spawn(self.argv, "pyfilter-" + self.name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("pyfilter exited with %s" % self.proc.returncode)
            try:
                c = _s.socket(_s.AF_UNIX, _s.SOCK_STREAM)
                c.connect(self.sock)
                c.close()
                # That probe connection is not a proxy: it sent no hello.
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("pyfilter did not listen on %s" % self.sock)

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def events(self, kind=None):
        try:
            with open(self.logfile) as f:
                ev = [json.loads(l) for l in f if l.strip()]
        except FileNotFoundError:
            return []
        return [e for e in ev if kind is None or e["event"] == kind]

    def requests(self):
        return self.events("request")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--mode", default="accept")
    p.add_argument("--name", default="py")
    p.add_argument("--commands", default="retr")
    p.add_argument("--actions", default="edit_headers,replace,reject,tempfail")
    p.add_argument("--max-message-size", type=int, default=0)
    p.add_argument("--max-inflight", type=int, default=32)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--close-after-hello", action="store_true")
    p.add_argument("--drain-after", type=int, default=0)
    p.add_argument("--keep-dir")
    p.add_argument("--log")
    a = p.parse_args()

    f = Filter(a)
    if os.path.exists(a.socket):
        os.unlink(a.socket)

    async def run():
        server = await asyncio.start_unix_server(f.serve, path=a.socket, backlog=128)
        # The proxy drops root for "nobody" and reconnects as that user.
        os.chmod(a.socket, 0o666)
        print("pyfilter %s listening on %s" % (a.name, a.socket), flush=True)
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        async with server:
            await stop
    asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
