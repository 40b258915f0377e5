# pop3filter.rb: a small library for pop3proxyd filters in Ruby (filter
# protocol v1, protocol/PROTOCOL.md): socket, framing, handshake, verdicts.
#
#   require_relative 'pop3filter'
#   POP3Filter.run(name: 'my-filter/1.0', actions: %w[edit_headers]) do |req|
#     POP3Filter.accept(POP3Filter.add_header('X-Seen', 'yes'))
#   end
#
# The block gets a Request (id, session, number, size, uidl, command,
# top_lines, deadline_ms, body, header(name)) and returns a verdict:
# accept(edits...), reject(notice), tempfail(reason), replace(body) or fail.
# One thread per proxy connection; messages of one connection are handled in
# turn. The library listens on --socket PATH, answers ping, refuses verdicts
# using actions not declared or not granted, and on SIGTERM says "drain",
# answers what is in flight, and exits 0.
require 'msgpack'
require 'optparse'
require 'socket'

module POP3Filter
  MAX_FRAME = 64 << 20
  MAX_DEPTH = 8
  MAX_OBJECTS = 65_536
  DRAIN_QUIET = 0.25
  ACTIONS = %w[edit_headers replace reject tempfail].freeze

  class BadFrame < StandardError
    attr_reader :code, :id
    def initialize(code, message, id = nil)
      super(message)
      @code = code
      @id = id
    end
  end

  # ---- structural check: walk the octets before decoding -------------------
  # Refuses truncation, trailing octets, depth, object counts, containers
  # claiming more than the frame holds, and duplicate str keys; str/bin
  # payloads are skipped, not walked.
  FIXED = { 0xca => 4, 0xcb => 8, 0xcc => 1, 0xcd => 2, 0xce => 4, 0xcf => 8, 0xd0 => 1,
            0xd1 => 2, 0xd2 => 4, 0xd3 => 8, 0xd4 => 2, 0xd5 => 3, 0xd6 => 5, 0xd7 => 9,
            0xd8 => 17 }.freeze
  LEN = { 0xc4 => 1, 0xc5 => 2, 0xc6 => 4, 0xd9 => 1, 0xda => 2, 0xdb => 4, 0xc7 => 1,
          0xc8 => 2, 0xc9 => 4 }.freeze
  CONT = { 0xdc => [2, 1], 0xdd => [4, 1], 0xde => [2, 2], 0xdf => [4, 2] }.freeze

  def self.scan(b, pos, depth, st)
    bad = ->(why) { raise BadFrame.new('bad_frame', why) }
    take = ->(n) { bad.('truncated') if b.bytesize - pos < n; pos + n }
    be = ->(n) { b.byteslice(pos, n).bytes.inject(0) { |v, x| v * 256 + x } }
    bad.('truncated') if pos >= b.bytesize
    st[0] += 1
    bad.('too many objects') if st[0] > MAX_OBJECTS
    t = b.getbyte(pos)
    pos += 1
    return [pos, nil] if t <= 0x7f || t >= 0xe0 || [0xc0, 0xc2, 0xc3].include?(t)
    if t.between?(0xa0, 0xbf)
      e = take.(t & 0x1f)
      return [e, b.byteslice(pos, e - pos)]
    end
    return [take.(FIXED[t]), nil] if FIXED[t]
    if LEN[t]
      w = LEN[t]
      take.(w)
      n = be.(w) + (t.between?(0xc7, 0xc9) ? 1 : 0)
      pos += w
      e = take.(n)
      return [e, t >= 0xd9 ? b.byteslice(pos, n) : nil]
    end
    bad.('reserved octet 0xc1') if t == 0xc1
    if t.between?(0x80, 0x8f) then n, per = t & 0x0f, 2
    elsif t.between?(0x90, 0x9f) then n, per = t & 0x0f, 1
    else
      w, per = CONT[t]
      take.(w)
      n = be.(w)
      pos += w
    end
    bad.('nested too deeply') if depth >= MAX_DEPTH
    bad.('container larger than the frame') if n * per > b.bytesize - pos
    keys = {}
    n.times do
      pos, key = scan(b, pos, depth + 1, st)
      next if per == 1
      unless key.nil?
        bad.('duplicate key') if keys[key]
        keys[key] = true
      end
      pos, = scan(b, pos, depth + 1, st)
    end
    [pos, nil]
  end

  def self.decode(data)
    last, = scan(data, 0, 0, [0])
    raise BadFrame.new('bad_frame', 'octets after the map') if last != data.bytesize
    m = begin
      MessagePack.unpack(data)
    rescue StandardError => e
      raise BadFrame.new('bad_frame', "malformed msgpack: #{e.message}")
    end
    raise BadFrame.new('bad_frame', 'frame is not a map') unless m.is_a?(Hash)
    raise BadFrame.new('bad_frame', 'no "type" string') unless str?(m['type'])
    m
  end

  # Strings leave as msgpack str (UTF-8), bodies as bin.
  def self.wire(v)
    case v
    when Hash then v.to_h { |k, x| [wire(k), k == 'body' ? x.b : wire(x)] }
    when Array then v.map { |x| wire(x) }
    when String then v.dup.force_encoding(Encoding::UTF_8)
    else v
    end
  end

  def self.frame(m)
    data = MessagePack.pack(wire(m))
    [data.bytesize].pack('N') + data
  end

  def self.uint?(v, max = (1 << 64) - 1)
    v.is_a?(Integer) && v >= 0 && v <= max
  end

  def self.str?(v)
    v.is_a?(String) && v.encoding != Encoding::BINARY
  end

  def self.check_request(m)
    id = uint?(m['id']) ? m['id'] : nil
    want = ->(ok, what) { raise BadFrame.new('bad_frame', "request.#{what}", id) unless ok }
    want.(id, 'id')
    want.(uint?(m['deadline_ms']), 'deadline_ms')
    s = m['session']
    msg = m['message']
    want.(s.is_a?(Hash) && msg.is_a?(Hash), 'session/message')
    %w[id client user upstream_host].each { |k| want.(str?(s[k]), "session.#{k}") }
    want.(uint?(s['upstream_port'], 65_535), 'session.upstream_port')
    %w[tls_client tls_upstream].each { |k| want.([true, false].include?(s[k]), "session.#{k}") }
    want.(uint?(msg['number']) && uint?(msg['size']), 'message.number/size')
    want.(msg['uidl'].nil? || str?(msg['uidl']), 'message.uidl')
    want.(%w[RETR TOP].include?(msg['command']), 'message.command')
    want.(msg['command'] != 'TOP' || uint?(msg['top_lines']), 'message.top_lines')
    want.(m['body'].is_a?(String) && m['body'].encoding == Encoding::BINARY, 'body')
    id
  end

  # ---- what a handler sees and returns --------------------------------------
  Request = Struct.new(:id, :deadline_ms, :session, :number, :size, :uidl, :command,
                       :top_lines, :body) do
    # The first header field called name (case-insensitive), unfolded, or nil.
    def header(name)
      head = body.split(/\r?\n\r?\n/, 2).first.to_s.gsub(/\r?\n[ \t]+/, ' ')
      head.each_line do |line|
        n, v = line.split(':', 2)
        return v.strip if v && n.strip.casecmp?(name)
      end
      nil
    end
  end

  def self.add_header(name, value) = { 'op' => 'add', 'name' => name, 'value' => value }
  def self.change_header(name, value, index = 1) = { 'op' => 'change', 'name' => name, 'value' => value, 'index' => index }
  def self.delete_header(name, index = 1) = { 'op' => 'delete', 'name' => name, 'index' => index }

  def self.extra(v, reason: nil, tags: nil, score: nil)
    v['reason'] = reason if reason
    v['tags'] = tags if tags
    v['score'] = score.to_f if score
    v
  end

  def self.accept(*edits, **opt)
    extra(edits.empty? ? { 'action' => 'accept' } : { 'action' => 'accept', 'edits' => edits }, **opt)
  end

  def self.reject(notice = nil, quarantine_id: nil, **opt)
    v = { 'action' => 'reject' }
    v['notice'] = notice if notice
    v['quarantine_id'] = quarantine_id if quarantine_id
    extra(v, **opt)
  end

  def self.tempfail(reason = nil) = extra({ 'action' => 'tempfail' }, reason: reason)
  def self.replace(body, **opt) = extra({ 'action' => 'replace', 'body' => body.b }, **opt)
  def self.fail(message = 'filter failed') = { 'type' => 'error', 'code' => 'internal', 'message' => message }

  # ---- the server ------------------------------------------------------------
  class Server
    def initialize(name:, actions: [], max_inflight: 16, &handler)
      bad = actions - ACTIONS
      raise ArgumentError, "unknown actions #{bad.join(', ')}" unless bad.empty?
      @name = name
      @actions = actions
      @max_inflight = max_inflight
      @handler = handler
      @draining = false
      @conns = {}
      @lock = Mutex.new
    end

    def log(text) = warn("#{@name}: #{text}")

    def transmit(c, m)
      c[:wlock].synchronize do
        c[:sock].write(POP3Filter.frame(m))
        c[:last_io] = Time.now
      end
    rescue IOError, SystemCallError
      nil
    end

    def error(c, code, message, id = nil)
      e = { 'type' => 'error', 'code' => code, 'message' => message.to_s[0, 4000] }
      e['id'] = id unless id.nil?
      transmit(c, e)
    end

    def answer(c, m)
      id = POP3Filter.check_request(m)
      raise BadFrame.new('unsupported', 'TOP not wanted', id) if m['message']['command'] == 'TOP'
      msg = m['message']
      req = Request.new(id, m['deadline_ms'], m['session'], msg['number'], msg['size'],
                        msg['uidl'], msg['command'], msg['top_lines'], m['body'])
      out = begin
        v = @handler.call(req)
        raise 'handler returned no verdict' unless v.is_a?(Hash)
        if v['type'] == 'error'
          v.merge('id' => id)
        else
          need = []
          need << v['action'] if %w[replace reject tempfail].include?(v['action'])
          need << 'edit_headers' if v['edits'] && !v['edits'].empty?
          missing = need - c[:granted]
          # Enforced here, never sent: the proxy would refuse it.
          raise "#{missing.join(', ')} not declared or not granted" unless missing.empty?
          body = v['body']
          out = { 'type' => 'verdict', 'id' => id }.merge(v.reject { |k, _| k == 'body' })
          body ? out.merge('body' => body) : out
        end
      rescue StandardError => e
        log("message #{id}: #{e.message}")
        { 'type' => 'error', 'id' => id, 'code' => 'internal', 'message' => e.message[0, 4000] }
      end
      transmit(c, out)
    end

    def hello(c, m)
      unless m['type'] == 'hello' && m['versions'].is_a?(Array) && m['capabilities'].is_a?(Array) &&
             POP3Filter.uint?(m['max_inflight']) && m['max_inflight'] >= 1
        raise BadFrame.new('bad_frame', 'expected a valid hello first')
      end
      unless m['versions'].include?(1)
        error(c, 'version', 'this filter speaks version 1')
        return false
      end
      c[:granted] = @actions & m['capabilities']
      ack = POP3Filter.frame({ 'type' => 'hello_ack', 'version' => 1, 'filter' => @name,
                               'commands' => ['retr'], 'actions' => @actions,
                               'max_message_size' => 0, 'max_frame' => MAX_FRAME,
                               'max_inflight' => @max_inflight })
      c[:wlock].synchronize do
        c[:sock].write(ack)
        c[:ready] = true
      end
      send_drain(c) # if draining began during the handshake
      true
    end

    # Exactly once per connection, after its hello_ack: both the signal
    # thread and the connection's own thread (right after the handshake)
    # come here, and the check and the write share the connection's lock.
    def send_drain(c)
      c[:wlock].synchronize do
        next unless @drain_started && c[:ready] && !c[:drain_sent]
        c[:sock].write(POP3Filter.frame({ 'type' => 'drain', 'reason' => 'SIGTERM' }))
        c[:drain_sent] = true
        c[:last_io] = Time.now
      end
    rescue IOError, SystemCallError
      nil
    end

    def frame(c, m)
      return hello(c, m) unless c[:ready]

      case m['type']
      when 'request' then answer(c, m)
      when 'ping'
        raise BadFrame.new('bad_frame', 'ping.id') unless POP3Filter.uint?(m['id'])
        transmit(c, { 'type' => 'pong', 'id' => m['id'] })
      when 'error' then log("proxy reports #{m['code']}: #{m['message']}")
      when 'cancel', 'pong' then nil # handled in turn: nothing left to stop
      when 'hello' then raise BadFrame.new('bad_frame', 'second hello')
      else raise BadFrame.new('unsupported', 'unexpected message type')
      end
      true
    end

    # Read exactly n octets; nil at EOF. While draining, give up (nil) once the
    # line has been quiet for DRAIN_QUIET between frames.
    def read(c, n, between)
      buf = +''
      while buf.bytesize < n
        if between && buf.empty?
          until c[:sock].wait_readable(0.05)
            return nil if @draining && Time.now - c[:last_io] >= DRAIN_QUIET
          end
        end
        chunk = c[:sock].readpartial([n - buf.bytesize, 1 << 16].min)
        buf << chunk
        c[:last_io] = Time.now
      end
      buf.b
    rescue EOFError, IOError, SystemCallError
      nil
    end

    def serve(sock)
      c = { sock: sock, wlock: Mutex.new, ready: false, granted: [], last_io: Time.now }
      @lock.synchronize { @conns[c.object_id] = c }
      loop do
        hdr = read(c, 4, true) or break
        n = hdr.unpack1('N')
        if n > MAX_FRAME # refused before reading: the stream cannot resync
          error(c, 'too_large', "frame of #{n} octets")
          break
        end
        data = n.zero? ? +'' : read(c, n, false)
        break if data.nil?
        begin
          raise BadFrame.new('bad_frame', 'empty frame') if n.zero?
          break unless frame(c, POP3Filter.decode(data))
        rescue BadFrame => e
          error(c, e.code, e.message, e.id)
          break unless c[:ready]
        end
      end
    ensure
      sock.close unless sock.closed?
      @lock.synchronize { @conns.delete(c.object_id) }
    end

    # "drain" goes out first, then the flag that lets idle connections
    # close: their quiet time counts from the drain frame, however late
    # this thread got to run.
    def drain(why)
      @drain_started = true
      conns = @lock.synchronize { @conns.values }
      log("#{why}: draining #{conns.size} connection(s)")
      conns.each { |c| send_drain(c) }
      @draining = true
    end

    def run(path)
      if File.socket?(path)
        begin
          UNIXSocket.new(path).close
          abort("#{@name}: another filter listens on #{path}")
        rescue SystemCallError
          File.unlink(path) # stale, from a crash
        end
      end
      server = UNIXServer.new(path)
      log("listening on #{path}")
      # Signal handlers may not lock: they only write to this pipe.
      sig_r, sig_w = IO.pipe
      %w[TERM INT].each { |s| trap(s) { sig_w.write_nonblock(s[0], exception: false) } }
      threads = []
      loop do
        ready, = IO.select([server, sig_r])
        if ready.include?(sig_r)
          abort("#{@name}: second signal: exiting now") if @draining
          sig_r.read_nonblock(16)
          server.close
          drain('SIGTERM')
          break
        end
        sock = server.accept
        threads << Thread.new(sock) { |s| serve(s) }
        threads.select!(&:alive?)
      end
      threads.each(&:join)
      File.unlink(path) if File.socket?(path)
      log('drained')
      exit 0
    end
  end

  # Parse --socket PATH and serve until SIGTERM.
  def self.run(name:, actions: [], max_inflight: 16, &handler)
    path = nil
    OptionParser.new { |o| o.on('--socket PATH') { |v| path = v } }.parse!
    abort("usage: #{$PROGRAM_NAME} --socket PATH") unless path
    Server.new(name: name, actions: actions, max_inflight: max_inflight, &handler).run(path)
  end
end
