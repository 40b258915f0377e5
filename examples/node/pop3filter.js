// pop3filter.js: a small library for pop3proxyd filters in Node.js (filter
// protocol v1, protocol/PROTOCOL.md): socket, framing, handshake, verdicts.
//
//   const pf = require('./pop3filter');
//   pf.main({ name: 'my-filter/1.0', actions: ['edit_headers'],
//             onMessage: async (req) => pf.accept(pf.addHeader('X-Seen', 'yes')) });
//
// onMessage gets a request ({ id, session, number, size, uidl, command,
// topLines, deadlineMs, body: Buffer, header(name) }) and returns a verdict,
// or a Promise of one, so it may wait on network services while other
// messages go on. The library listens on --socket PATH, answers ping, drops
// cancelled requests, refuses verdicts using actions not declared or not
// granted, and on SIGTERM says "drain", answers what is in flight, exits 0.
'use strict';

const fs = require('fs');
const net = require('net');
const { encode, decode } = require('@msgpack/msgpack');

const MAX_FRAME = 64 << 20;
const MAX_DEPTH = 8;
const MAX_OBJECTS = 65536;
const DRAIN_QUIET_MS = 250;
const ACTIONS = ['edit_headers', 'replace', 'reject', 'tempfail'];

class BadFrame extends Error {
  constructor(code, message, id) { super(message); this.code = code; this.id = id; }
}

// ---- structural check: walk the octets before decoding ------------------
// Refuses truncation, trailing octets, depth, object counts, containers that
// claim more than the frame holds, and duplicate str keys (which decoders
// resolve differently); str/bin payloads are skipped, not walked.
const FIXED = { 0xca: 4, 0xcb: 8, 0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8, 0xd0: 1, 0xd1: 2,
  0xd2: 4, 0xd3: 8, 0xd4: 2, 0xd5: 3, 0xd6: 5, 0xd7: 9, 0xd8: 17 };
const LEN = { 0xc4: 1, 0xc5: 2, 0xc6: 4, 0xd9: 1, 0xda: 2, 0xdb: 4, 0xc7: 1, 0xc8: 2, 0xc9: 4 };
const CONT = { 0xdc: [2, 1], 0xdd: [4, 1], 0xde: [2, 2], 0xdf: [4, 2] };

function scan(b, pos, depth, st) {
  const bad = (why) => { throw new BadFrame('bad_frame', why); };
  const take = (n) => { if (b.length - pos < n) bad('truncated'); return pos + n; };
  const be = (n) => { let v = 0; for (let i = 0; i < n; i++) v = v * 256 + b[pos + i]; return v; };
  if (pos >= b.length) bad('truncated');
  if (++st.objects > MAX_OBJECTS) bad('too many objects');
  const t = b[pos++];
  if (t <= 0x7f || t >= 0xe0 || t === 0xc0 || t === 0xc2 || t === 0xc3) return [pos, null];
  if (t >= 0xa0 && t <= 0xbf) { const e = take(t & 0x1f); return [e, b.subarray(pos, e)]; }
  if (FIXED[t]) return [take(FIXED[t]), null];
  if (LEN[t]) {
    const w = LEN[t];
    take(w);
    const n = be(w) + (t >= 0xc7 && t <= 0xc9 ? 1 : 0);
    pos += w;
    const e = take(n);
    return [e, t >= 0xd9 ? b.subarray(pos, e) : null];
  }
  if (t === 0xc1) bad('reserved octet 0xc1');
  let n, per;
  if (t >= 0x80 && t <= 0x8f) { n = t & 0x0f; per = 2; }
  else if (t >= 0x90 && t <= 0x9f) { n = t & 0x0f; per = 1; }
  else { const [w, p] = CONT[t]; take(w); n = be(w); pos += w; per = p; }
  if (depth >= MAX_DEPTH) bad('nested too deeply');
  if (n * per > b.length - pos) bad('container larger than the frame');
  const keys = new Set();
  for (let i = 0; i < n; i++) {
    let key;
    [pos, key] = scan(b, pos, depth + 1, st);
    if (per === 1) continue;
    if (key !== null) {
      const k = key.toString('latin1');
      if (keys.has(k)) bad('duplicate key');
      keys.add(k);
    }
    [pos] = scan(b, pos, depth + 1, st);
  }
  return [pos, null];
}

function decodeFrame(data) {
  const [end] = scan(data, 0, 0, { objects: 0 });
  if (end !== data.length) throw new BadFrame('bad_frame', 'octets after the map');
  let m;
  try { m = decode(data); } catch (e) { throw new BadFrame('bad_frame', 'malformed msgpack: ' + e.message); }
  if (m === null || typeof m !== 'object' || Array.isArray(m) || m instanceof Uint8Array)
    throw new BadFrame('bad_frame', 'frame is not a map');
  if (typeof m.type !== 'string') throw new BadFrame('bad_frame', 'no "type" string');
  return m;
}

function frame(obj) {
  const data = encode(obj);
  const out = Buffer.alloc(4 + data.length);
  out.writeUInt32BE(data.length, 0);
  Buffer.from(data.buffer, data.byteOffset, data.length).copy(out, 4);
  return out;
}

// ---- checks of what the proxy sends ----------------------------------------
const isUint = (v, max = Number.MAX_SAFE_INTEGER) =>
  (Number.isInteger(v) && v >= 0 && v <= max) || (typeof v === 'bigint' && v >= 0n);
const isStr = (v) => typeof v === 'string';
const isMap = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array);

function checkRequest(m) {
  const id = isUint(m.id) ? m.id : undefined;
  const want = (ok, what) => { if (!ok) throw new BadFrame('bad_frame', 'request.' + what, id); };
  want(id !== undefined, 'id');
  want(isUint(m.deadline_ms), 'deadline_ms');
  const s = m.session, msg = m.message;
  want(isMap(s) && isMap(msg), 'session/message');
  for (const k of ['id', 'client', 'user', 'upstream_host']) want(isStr(s[k]), 'session.' + k);
  want(isUint(s.upstream_port, 65535), 'session.upstream_port');
  for (const k of ['tls_client', 'tls_upstream']) want(typeof s[k] === 'boolean', 'session.' + k);
  want(isUint(msg.number) && isUint(msg.size), 'message.number/size');
  want(msg.uidl === undefined || msg.uidl === null || isStr(msg.uidl), 'message.uidl');
  want(msg.command === 'RETR' || msg.command === 'TOP', 'message.command');
  want(msg.command !== 'TOP' || isUint(msg.top_lines), 'message.top_lines');
  want(m.body instanceof Uint8Array, 'body');
  return id;
}

// ---- what a handler sees and returns -----------------------------------------
function headerOf(body, name) {
  const text = Buffer.from(body.buffer, body.byteOffset, body.length).toString('latin1');
  const head = text.split(/\r?\n\r?\n/, 1)[0].replace(/\r?\n[ \t]+/g, ' ');
  const want = name.toLowerCase();
  for (const line of head.split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0 && line.slice(0, i).trim().toLowerCase() === want) return line.slice(i + 1).trim();
  }
  return undefined;
}

const addHeader = (name, value) => ({ op: 'add', name, value });
const changeHeader = (name, value, index = 1) => ({ op: 'change', name, value, index });
const deleteHeader = (name, index = 1) => ({ op: 'delete', name, index });
const extra = (v, o = {}) => {
  for (const k of ['reason', 'tags', 'score']) if (o[k] !== undefined) v[k] = o[k];
  return v;
};
const accept = (...edits) => {
  const o = edits.length && !edits[edits.length - 1].op ? edits.pop() : {};
  return extra(edits.length ? { action: 'accept', edits } : { action: 'accept' }, o);
};
const reject = (notice, o = {}) => extra(Object.assign({ action: 'reject' },
  notice !== undefined ? { notice } : {}, o.quarantineId ? { quarantine_id: o.quarantineId } : {}), o);
const tempfail = (reason) => extra({ action: 'tempfail' }, { reason });
const replace = (body, o = {}) => extra({ action: 'replace', body: Buffer.from(body) }, o);
const fail = (message = 'filter failed') => ({ type: 'error', code: 'internal', message });

function needs(v) {
  const need = [];
  if (['replace', 'reject', 'tempfail'].includes(v.action)) need.push(v.action);
  if (v.edits && v.edits.length) need.push('edit_headers');
  return need;
}

// ---- the server --------------------------------------------------------------
class Filter {
  constructor({ name, onMessage, actions = [], maxInflight = 16, log }) {
    for (const a of actions) if (!ACTIONS.includes(a)) throw new Error('unknown action ' + a);
    this.name = name;
    this.onMessage = onMessage;
    this.actions = actions;
    this.maxInflight = maxInflight;
    this.log = log || ((s) => process.stderr.write(`${name}: ${s}\n`));
    this.conns = new Set();
    this.draining = false;
  }

  send(c, m) {
    if (!c.sock.destroyed && !c.sock.writableEnded) {
      c.sock.write(frame(m));
      c.lastIo = Date.now();
    }
  }

  error(c, code, message, id) {
    const e = { type: 'error', code, message: String(message).slice(0, 4000) };
    if (id !== undefined) e.id = id;
    this.send(c, e);
  }

  // Draining: close once nothing is in flight and the line has been quiet a
  // moment, so requests that crossed our "drain" are answered too.
  linger(c) {
    if (!this.draining || c.inflight.size || c.sock.writableEnded) return;
    const idle = Date.now() - c.lastIo;
    if (idle >= DRAIN_QUIET_MS) c.sock.end();
    else setTimeout(() => this.linger(c), DRAIN_QUIET_MS - idle);
  }

  async answer(c, id, req) {
    let out;
    try {
      const v = await this.onMessage(req);
      if (!v || typeof v !== 'object') throw new Error('handler returned no verdict');
      if (v.type === 'error') out = Object.assign({}, v, { id });
      else {
        const missing = needs(v).filter((a) => !c.granted.has(a));
        // Enforced here, never sent: the proxy would refuse it.
        if (missing.length) throw new Error(`${missing.join(', ')} not declared or not granted`);
        out = Object.assign({ type: 'verdict', id }, v);
        if (out.body) { const b = out.body; delete out.body; out.body = b; }   // body last
      }
    } catch (e) {
      this.log(`message ${id}: ${e.message}`);
      out = { type: 'error', id, code: 'internal', message: String(e.message).slice(0, 4000) };
    }
    if (!c.inflight.delete(id)) return;     // cancelled meanwhile
    this.send(c, out);
    this.linger(c);
  }

  onFrame(c, m) {
    const t = m.type;
    if (!c.ready) {
      if (t !== 'hello' || !Array.isArray(m.versions) || !Array.isArray(m.capabilities) ||
          !isUint(m.max_inflight) || m.max_inflight < 1)
        throw new BadFrame('bad_frame', 'expected a valid hello first');
      if (!m.versions.some((v) => v === 1)) {
        this.error(c, 'version', 'this filter speaks version 1');
        return false;
      }
      c.granted = new Set(this.actions.filter((a) => m.capabilities.includes(a)));
      c.window = Math.min(this.maxInflight, m.max_inflight);
      this.send(c, { type: 'hello_ack', version: 1, filter: this.name, commands: ['retr'],
        actions: this.actions, max_message_size: 0, max_frame: MAX_FRAME,
        max_inflight: this.maxInflight });
      c.ready = true;
      if (this.draining) {
        this.send(c, { type: 'drain', reason: 'draining' });
        this.linger(c);
      }
      return true;
    }
    if (t === 'request') {
      const id = checkRequest(m);
      if (c.inflight.has(id)) throw new BadFrame('bad_frame', 'request id already in flight', id);
      if (c.inflight.size >= c.window) throw new BadFrame('busy', 'in-flight window full', id);
      if (m.message.command === 'TOP') throw new BadFrame('unsupported', 'TOP not wanted', id);
      const msg = m.message;
      const body = Buffer.from(m.body.buffer, m.body.byteOffset, m.body.length);
      const req = { id, session: m.session, deadlineMs: m.deadline_ms, number: msg.number,
        size: msg.size, uidl: msg.uidl === undefined ? null : msg.uidl, command: msg.command,
        topLines: msg.top_lines, body, header: (name) => headerOf(body, name) };
      c.inflight.add(id);
      this.answer(c, id, req);
    } else if (t === 'ping') {
      if (!isUint(m.id)) throw new BadFrame('bad_frame', 'ping.id');
      this.send(c, { type: 'pong', id: m.id });
    } else if (t === 'cancel') {
      c.inflight.delete(m.id);               // its answer is dropped
      this.linger(c);
    } else if (t === 'error') {
      this.log(`proxy reports ${m.code}: ${m.message || ''}`);
    } else if (t === 'hello') {
      throw new BadFrame('bad_frame', 'second hello');
    } else if (t !== 'pong') {
      throw new BadFrame('unsupported', 'unexpected message type');
    }
    return true;
  }

  connection(sock) {
    const c = { sock, chunks: [], have: 0, ready: false, inflight: new Set(),
      granted: new Set(), window: 1, lastIo: Date.now() };
    this.conns.add(c);
    if (this.draining) { sock.destroy(); return; }
    sock.on('data', (chunk) => {
      c.chunks.push(chunk);
      c.have += chunk.length;
      c.lastIo = Date.now();
      while (c.have >= 4) {
        let buf = c.chunks.length === 1 ? c.chunks[0] : Buffer.concat(c.chunks);
        c.chunks = [buf];
        const n = buf.readUInt32BE(0);
        if (n > MAX_FRAME) {        // refused before reading: cannot resync
          this.error(c, 'too_large', `frame of ${n} octets`);
          sock.end();
          sock.removeAllListeners('data');
          return;
        }
        if (c.have < 4 + n) break;
        const data = buf.subarray(4, 4 + n);
        buf = buf.subarray(4 + n);
        c.chunks = buf.length ? [buf] : [];
        c.have = buf.length;
        let keep = true;
        try {
          if (n === 0) throw new BadFrame('bad_frame', 'empty frame');
          keep = this.onFrame(c, decodeFrame(data));
        } catch (e) {
          if (!(e instanceof BadFrame)) throw e;
          this.error(c, e.code, e.message, e.id);
          keep = c.ready;
        }
        if (!keep) { sock.end(); sock.removeAllListeners('data'); return; }
      }
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      this.conns.delete(c);
      c.inflight.clear();
      if (this.draining && this.conns.size === 0) this.finish();
    });
  }

  finish() {
    try { fs.unlinkSync(this.path); } catch (e) { /* gone already */ }
    this.log('drained');
    process.exit(0);
  }

  drain(why) {
    if (this.draining) { this.log(`second ${why}: exiting now`); process.exit(1); }
    this.draining = true;
    this.log(`${why}: draining ${this.conns.size} connection(s)`);
    this.server.close();
    for (const c of this.conns) {
      if (!c.ready) { c.sock.destroy(); continue; }
      this.send(c, { type: 'drain', reason: why });
      this.linger(c);
    }
    if (this.conns.size === 0) this.finish();
  }

  listen(path) {
    this.path = path;
    try {
      if (fs.lstatSync(path).isSocket()) fs.unlinkSync(path);  // stale: see main()
    } catch (e) { /* no such file */ }
    this.server = net.createServer((s) => this.connection(s));
    this.server.listen(path, () => this.log(`listening on ${path}`));
    process.on('SIGTERM', () => this.drain('SIGTERM'));
    process.on('SIGINT', () => this.drain('SIGINT'));
  }
}

// Parse --socket PATH and run; refuses a socket another filter answers on.
function main(opts) {
  const i = process.argv.indexOf('--socket');
  const path = i > 0 ? process.argv[i + 1] : undefined;
  if (!path) { process.stderr.write(`usage: ${process.argv[1]} --socket PATH\n`); process.exit(2); }
  const probe = net.connect(path);
  probe.on('connect', () => {
    process.stderr.write(`${opts.name}: another filter listens on ${path}\n`);
    process.exit(1);
  });
  probe.on('error', () => new Filter(opts).listen(path));
}

module.exports = { main, Filter, accept, reject, tempfail, replace, fail, addHeader,
  changeHeader, deleteHeader, headerOf };
