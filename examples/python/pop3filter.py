# pop3filter.py: a small library for pop3proxyd filters in Python (filter
# protocol v1, protocol/PROTOCOL.md): the socket, framing, handshake, verdicts.
"""Write a pop3proxyd filter in a few lines:

    import pop3filter

    def on_message(req):
        return pop3filter.accept(pop3filter.add_header("X-Seen", "yes"))

    pop3filter.main("my-filter/1.0", on_message, actions=["edit_headers"])

The handler gets a Request and returns a verdict (accept, reject, tempfail,
replace, fail); it may also be a coroutine (async def), so a filter can wait
on a network service without holding up other messages. The library listens
on --socket PATH, speaks the protocol, answers ping, honours cancel, refuses
verdicts that use actions you did not declare (or the proxy did not grant),
and drains on SIGTERM: it says "drain", answers what is in flight, exits 0.
"""

import argparse
import asyncio
import os
import signal
import socket
import stat
import struct
import sys
import time

import msgpack

VERSION = 1
MAX_FRAME = 64 << 20          # what we accept
MAX_DEPTH = 8                 # containers in one frame
MAX_OBJECTS = 65536           # msgpack objects in one frame
DRAIN_QUIET = 0.25            # draining: close after this long idle
ACTIONS = ("edit_headers", "replace", "reject", "tempfail")


class BadFrame(Exception):
    def __init__(self, code, message, id=None):
        super().__init__(message)
        self.code, self.id = code, id


# -- structural check ---------------------------------------------------------
# msgpack libraries trust the counts in a frame and differ on duplicate keys;
# walk the octets first (skipping str/bin payloads): truncation, trailing
# octets, depth, object count, containers claiming more than the frame holds,
# and duplicate str keys are refused before anything is decoded.

_FIXED = {0xca: 4, 0xcb: 8, 0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8, 0xd0: 1,
          0xd1: 2, 0xd2: 4, 0xd3: 8, 0xd4: 2, 0xd5: 3, 0xd6: 5, 0xd7: 9,
          0xd8: 17}
_LEN = {0xc4: 1, 0xc5: 2, 0xc6: 4, 0xd9: 1, 0xda: 2, 0xdb: 4}   # bin, str
_EXT = {0xc7: 1, 0xc8: 2, 0xc9: 4}
_CONT = {0xdc: (2, 1), 0xdd: (4, 1), 0xde: (2, 2), 0xdf: (4, 2)}


def _scan(b, pos, depth, count):
    """Returns (next position, str payload or None)."""
    if pos >= len(b):
        raise BadFrame("bad_frame", "truncated")
    count[0] += 1
    if count[0] > MAX_OBJECTS:
        raise BadFrame("bad_frame", "too many objects")
    t = b[pos]
    pos += 1

    def take(n):
        if len(b) - pos < n:
            raise BadFrame("bad_frame", "truncated")
        return pos + n

    if t <= 0x7f or t >= 0xe0 or t in (0xc0, 0xc2, 0xc3):
        return pos, None
    if 0xa0 <= t <= 0xbf:
        end = take(t & 0x1f)
        return end, b[pos:end]
    if t in _FIXED:
        return take(_FIXED[t]), None
    if t in _LEN or t in _EXT:
        w = _LEN.get(t) or _EXT[t]
        n = int.from_bytes(b[pos:take(w)], "big") + (1 if t in _EXT else 0)
        pos += w
        end = take(n)
        return end, (b[pos:end] if t in (0xd9, 0xda, 0xdb) else None)
    if t == 0xc1:
        raise BadFrame("bad_frame", "reserved octet 0xc1")
    if 0x80 <= t <= 0x8f:
        n, per = t & 0x0f, 2
    elif 0x90 <= t <= 0x9f:
        n, per = t & 0x0f, 1
    else:
        w, per = _CONT[t]
        n = int.from_bytes(b[pos:take(w)], "big")
        pos += w
    if depth >= MAX_DEPTH:
        raise BadFrame("bad_frame", "nested too deeply")
    if n * per > len(b) - pos:
        raise BadFrame("bad_frame", "container larger than the frame")
    keys = set()
    for _ in range(n):
        pos, key = _scan(b, pos, depth + 1, count)
        if per == 2:
            if key is not None:
                if key in keys:
                    raise BadFrame("bad_frame", "duplicate key %r" % bytes(key))
                keys.add(key)
            pos, _ = _scan(b, pos, depth + 1, count)
    return pos, None


def decode(data):
    """One frame's octets -> dict with a str "type", or BadFrame."""
    end, _ = _scan(data, 0, 0, [0])
    if end != len(data):
        raise BadFrame("bad_frame", "octets after the map")
    try:
        m = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:
        raise BadFrame("bad_frame", "malformed msgpack: %s" % e)
    if not isinstance(m, dict):
        raise BadFrame("bad_frame", "frame is not a map")
    if not isinstance(m.get("type"), str):
        raise BadFrame("bad_frame", 'no "type" string')
    return m


def encode(m):
    data = msgpack.packb(m, use_bin_type=True)
    return struct.pack(">I", len(data)) + data


# -- checks of what the proxy sends -------------------------------------------

def _uint(v, limit=(1 << 64) - 1):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= limit


def _want(cond, what, id=None):
    if not cond:
        raise BadFrame("bad_frame", what, id)


def check_hello(m):
    v = m.get("versions")
    _want(isinstance(v, list) and 1 <= len(v) <= 64 and all(_uint(x) for x in v),
          "hello.versions")
    _want(isinstance(m.get("proxy"), str), "hello.proxy")
    caps = m.get("capabilities")
    _want(isinstance(caps, list) and all(isinstance(c, str) for c in caps),
          "hello.capabilities")
    _want(_uint(m.get("max_frame")) and m["max_frame"] >= 65536, "hello.max_frame")
    _want(_uint(m.get("max_inflight")) and m["max_inflight"] >= 1,
          "hello.max_inflight")


def check_request(m):
    id = m.get("id") if _uint(m.get("id")) else None
    _want(id is not None, "request.id")
    _want(_uint(m.get("deadline_ms")), "request.deadline_ms", id)
    s, msg = m.get("session"), m.get("message")
    _want(isinstance(s, dict) and isinstance(msg, dict), "request maps", id)
    for k in ("id", "client", "user", "upstream_host"):
        _want(isinstance(s.get(k), str), "session." + k, id)
    _want(_uint(s.get("upstream_port"), 65535), "session.upstream_port", id)
    for k in ("tls_client", "tls_upstream"):
        _want(isinstance(s.get(k), bool), "session." + k, id)
    _want(_uint(msg.get("number")) and _uint(msg.get("size")), "message.number/size", id)
    _want(msg.get("uidl") is None or isinstance(msg["uidl"], str), "message.uidl", id)
    _want(msg.get("command") in ("RETR", "TOP"), "message.command", id)
    _want(msg["command"] != "TOP" or _uint(msg.get("top_lines")), "message.top_lines", id)
    _want(isinstance(m.get("body"), bytes), "request.body", id)
    return id


# -- what a handler sees and returns ------------------------------------------

class Request:
    """One message: .id .session (dict) .number .size .uidl .command
    .top_lines .deadline_ms and .body (bytes, CRLF lines)."""

    def __init__(self, m):
        msg = m["message"]
        self.id, self.deadline_ms = m["id"], m["deadline_ms"]
        self.session, self.body = m["session"], m["body"]
        self.number, self.size = msg["number"], msg["size"]
        self.uidl, self.command = msg.get("uidl"), msg["command"]
        self.top_lines = msg.get("top_lines")

    def headers(self):
        """[(name, value)] of the header block, values unfolded, as str."""
        head = self.body.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        out = []
        for line in head.replace(b"\r\n", b"\n").split(b"\n"):
            if line[:1] in (b" ", b"\t") and out:
                out[-1][1] += " " + line.strip().decode("utf-8", "replace")
            elif b":" in line:
                n, v = line.split(b":", 1)
                out.append([n.strip().decode("ascii", "replace"),
                            v.strip().decode("utf-8", "replace")])
        return [(n, v) for n, v in out]

    def header(self, name, default=None):
        """The first field called name (case-insensitive), or default."""
        for n, v in self.headers():
            if n.lower() == name.lower():
                return v
        return default


def add_header(name, value):
    return {"op": "add", "name": name, "value": value}


def change_header(name, value, index=1):
    return {"op": "change", "name": name, "value": value, "index": index}


def delete_header(name, index=1):
    return {"op": "delete", "name": name, "index": index}


def _extra(v, reason, tags, score):
    if reason is not None:
        v["reason"] = reason
    if tags:
        v["tags"] = list(tags)
    if score is not None:
        v["score"] = float(score)
    return v


def accept(*edits, reason=None, tags=None, score=None):
    v = {"action": "accept"}
    if edits:
        v["edits"] = list(edits)
    return _extra(v, reason, tags, score)


def reject(notice=None, quarantine_id=None, reason=None, tags=None, score=None):
    v = {"action": "reject"}
    if notice is not None:
        v["notice"] = notice
    if quarantine_id is not None:
        v["quarantine_id"] = quarantine_id
    return _extra(v, reason, tags, score)


def tempfail(reason=None):
    return _extra({"action": "tempfail"}, reason, None, None)


def replace(body, reason=None):
    return _extra({"action": "replace", "body": bytes(body)}, reason, None, None)


def fail(message="filter failed"):
    """Not a verdict: an error for this request (the proxy's fallback applies)."""
    return {"type": "error", "code": "internal", "message": message}


def _needs(v):
    a = v.get("action")
    need = set()
    if a in ("replace", "reject", "tempfail"):
        need.add(a)
    if v.get("edits"):
        need.add("edit_headers")
    return need


# -- the server ----------------------------------------------------------------

class Filter:
    def __init__(self, name, handler, actions=(), commands=("retr",),
                 max_inflight=16, max_message_size=0, log=None):
        bad = set(actions) - set(ACTIONS)
        if bad:
            raise ValueError("unknown actions: %s" % ", ".join(sorted(bad)))
        self.name, self.handler = name, handler
        self.actions, self.commands = list(actions), list(commands)
        self.max_inflight, self.max_message_size = max_inflight, max_message_size
        self.log = log or (lambda text: print("%s: %s" % (name, text),
                                              file=sys.stderr, flush=True))
        self.conns = {}             # id(conn) -> conn
        self.draining = False
        self.done = None

    # One connection: read frames, answer them; requests run as tasks so
    # that many are in flight and replies go out in any order.
    async def _serve(self, reader, writer):
        conn = {"writer": writer, "tasks": {}, "granted": set(), "ready": False,
                "last_io": time.monotonic()}
        self.conns[id(conn)] = conn
        try:
            while True:
                hdr = await reader.readexactly(4)
                n = struct.unpack(">I", hdr)[0]
                if n > MAX_FRAME:
                    # Refused before reading: the stream cannot resync.
                    self._send(conn, {"type": "error", "code": "too_large",
                                      "message": "frame of %d octets" % n})
                    break
                data = await reader.readexactly(n) if n else b""
                conn["last_io"] = time.monotonic()
                try:
                    if n == 0:
                        raise BadFrame("bad_frame", "empty frame")
                    if not self._frame(conn, decode(data)):
                        break
                except BadFrame as e:
                    err = {"type": "error", "code": e.code, "message": str(e)}
                    if e.id is not None:
                        err["id"] = e.id
                    self._send(conn, err)
                    if not conn["ready"]:
                        break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for t in conn["tasks"].values():
                t.cancel()
            await self._close(conn)

    def _frame(self, conn, m):
        """Handle one decoded frame; False closes the connection."""
        t = m["type"]
        if not conn["ready"]:
            if t != "hello":
                raise BadFrame("bad_frame", "expected hello first")
            check_hello(m)
            if VERSION not in m["versions"]:
                self._send(conn, {"type": "error", "code": "version",
                                  "message": "this filter speaks version 1"})
                return False
            conn["granted"] = set(self.actions) & set(m["capabilities"])
            self._send(conn, {"type": "hello_ack", "version": VERSION,
                              "filter": self.name, "commands": self.commands,
                              "actions": self.actions,
                              "max_message_size": self.max_message_size,
                              "max_frame": MAX_FRAME,
                              "max_inflight": self.max_inflight})
            conn["ready"] = True
            conn["window"] = min(self.max_inflight, m["max_inflight"])
            if self.draining:
                self._send(conn, {"type": "drain"})
            return True
        if t == "request":
            id = check_request(m)
            if id in conn["tasks"]:
                raise BadFrame("bad_frame", "request id already in flight", id)
            if len(conn["tasks"]) >= conn["window"]:
                raise BadFrame("busy", "in-flight window full", id)
            if m["message"]["command"] == "TOP" and "top" not in self.commands:
                raise BadFrame("unsupported", "TOP not wanted", id)
            conn["tasks"][id] = asyncio.ensure_future(self._run(conn, Request(m)))
        elif t == "ping":
            _want(_uint(m.get("id")), "ping.id")
            self._send(conn, {"type": "pong", "id": m["id"]})
        elif t == "cancel":
            _want(_uint(m.get("id")), "cancel.id")
            task = conn["tasks"].pop(m["id"], None)
            if task is not None:
                task.cancel()
        elif t == "error":
            self.log("proxy reports %s: %s" % (m.get("code"), m.get("message", "")))
        elif t in ("pong",):
            pass
        elif t == "hello":
            raise BadFrame("bad_frame", "second hello")
        else:
            raise BadFrame("unsupported", "unexpected message type %r" % t[:32])
        return True

    async def _run(self, conn, req):
        try:
            v = self.handler(req)
            if asyncio.iscoroutine(v):
                v = await v
            if not isinstance(v, dict):
                raise TypeError("handler returned %r, not a verdict" % (v,))
            if v.get("type") == "error":
                out = dict(v, id=req.id)
            else:
                missing = _needs(v) - conn["granted"]
                if missing:
                    # Enforced here, never sent: the proxy would refuse it.
                    what = "declared" if missing - set(self.actions) else "granted"
                    raise PermissionError("%s not %s" % (", ".join(sorted(missing)), what))
                out = {"type": "verdict", "id": req.id}
                out.update(v)
                if "body" in out:           # body last, as the spec suggests
                    out["body"] = out.pop("body")
        except asyncio.CancelledError:
            return
        except Exception as e:
            self.log("message %s: %s: %s" % (req.id, type(e).__name__, e))
            out = {"type": "error", "id": req.id, "code": "internal",
                   "message": str(e)[:4000]}
        if conn["tasks"].pop(req.id, None) is None:
            return                          # cancelled meanwhile
        self._send(conn, out)
        self._linger(conn)

    # Draining: close once nothing is in flight and the connection has been
    # quiet a moment (requests that crossed our "drain" are still answered).
    def _linger(self, conn):
        if not self.draining or conn["tasks"] or conn["writer"].is_closing():
            return
        idle = time.monotonic() - conn["last_io"]
        if idle >= DRAIN_QUIET:
            asyncio.ensure_future(self._close(conn))
        else:
            asyncio.get_running_loop().call_later(DRAIN_QUIET - idle,
                                                  self._linger, conn)

    def _send(self, conn, m):
        w = conn["writer"]
        if not w.is_closing():
            w.write(encode(m))
            conn["last_io"] = time.monotonic()

    async def _close(self, conn):
        w = conn["writer"]
        if not w.is_closing():
            try:
                await w.drain()
            except ConnectionError:
                pass
            w.close()
        self.conns.pop(id(conn), None)
        if self.draining and not self.conns:
            self.done.set()

    def _drain(self, server, why):
        if self.draining:
            self.log("second %s: exiting now" % why)
            os._exit(1)
        self.draining = True
        self.log("%s: draining %d connection(s)" % (why, len(self.conns)))
        server.close()
        for conn in list(self.conns.values()):
            if conn["ready"]:
                self._send(conn, {"type": "drain", "reason": why})
                self._linger(conn)
            else:
                asyncio.ensure_future(self._close(conn))
        if not self.conns:
            self.done.set()

    async def serve(self, path):
        self.done = asyncio.Event()
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                probe = socket.socket(socket.AF_UNIX)
                try:
                    probe.connect(path)
                    raise SystemExit("%s: another filter listens on %s" % (self.name, path))
                except ConnectionRefusedError:
                    os.unlink(path)         # stale, from a crash
                finally:
                    probe.close()
        except FileNotFoundError:
            pass
        server = await asyncio.start_unix_server(self._serve, path, limit=MAX_FRAME)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._drain, server, sig.name)
        self.log("listening on %s" % path)
        await self.done.wait()
        try:
            os.unlink(path)
        except OSError:
            pass
        self.log("drained")


def main(name, handler, **kw):
    """Parse --socket PATH and run the filter until SIGTERM; exits 0."""
    ap = argparse.ArgumentParser(description=name)
    ap.add_argument("--socket", required=True, help="UNIX socket to listen on")
    args = ap.parse_args()
    asyncio.run(Filter(name, handler, **kw).serve(args.socket))
    sys.exit(0)
