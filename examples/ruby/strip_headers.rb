#!/usr/bin/ruby
# strip_headers.rb: example pop3proxyd filter in Ruby: removes headers that
# leak the sender's whereabouts (X-Originating-IP and friends) before the
# message reaches the mail client, and notes how many it removed.
require_relative 'pop3filter'

LEAKY = %w[X-Originating-IP X-Sender-IP X-Forwarded-For].freeze

POP3Filter.run(name: 'strip_headers.rb/1.0', actions: %w[edit_headers]) do |req|
  found = LEAKY.select { |h| req.header(h) }
  next POP3Filter.accept(reason: 'nothing to strip') if found.empty?

  edits = found.map { |h| POP3Filter.delete_header(h, 0) } # 0: every occurrence
  edits << POP3Filter.add_header('X-Stripped', found.join(', '))
  POP3Filter.accept(*edits, tags: ['stripped'])
end
