# POP3Filter.pm: a small library for pop3proxyd filters in Perl (filter
# protocol v1, protocol/PROTOCOL.md): socket, framing, handshake, verdicts.
package POP3Filter;

=head1 SYNOPSIS

    use POP3Filter qw(run accept_msg add_header);
    run(name => 'my-filter/1.0', actions => ['edit_headers'],
        on_message => sub { my ($req) = @_;
            return accept_msg(add_header('X-Seen', 'yes')) });

The handler gets a request hash (id, session, number, size, uidl, command,
top_lines, deadline_ms, body) and returns a verdict built with accept_msg,
reject_msg, tempfail_msg or fail_msg. The library listens on --socket PATH,
answers ping, refuses verdicts using actions not declared or not granted, and
on SIGTERM sends "drain", finishes, and exits 0. Handlers run one at a time.

=cut

use strict;
use warnings;
use B ();
use Data::MessagePack;
use Errno qw(EAGAIN EINTR EWOULDBLOCK);
use Exporter 'import';
use Getopt::Long qw(GetOptions);
use IO::Select;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);
use Time::HiRes qw(time);

our @EXPORT_OK = qw(run accept_msg reject_msg tempfail_msg fail_msg add_header
    change_header delete_header header);

use constant { MAX_FRAME => 64 << 20, MAX_DEPTH => 8, MAX_OBJECTS => 65536,
    DRAIN_QUIET => 0.25 };
my %ACTIONS = map { $_ => 1 } qw(edit_headers replace reject tempfail);

# ---- verdicts -------------------------------------------------------------

sub add_header    { { op => 'add', name => $_[0], value => $_[1] } }
sub change_header { { op => 'change', name => $_[0], value => $_[1], index => $_[2] // 1 } }
sub delete_header { { op => 'delete', name => $_[0], index => $_[1] // 1 } }

sub accept_msg {
    my (@edits) = @_;
    my %opt = ref $edits[-1] eq 'ARRAY' ? @{ pop @edits } : ();
    return { action => 'accept', (@edits ? (edits => \@edits) : ()), %opt };
}
sub reject_msg   { my ($notice, %opt) = @_; { action => 'reject', (defined $notice ? (notice => $notice) : ()), %opt } }
sub tempfail_msg { my ($reason) = @_; { action => 'tempfail', (defined $reason ? (reason => $reason) : ()) } }
sub fail_msg     { { type => 'error', code => 'internal', message => $_[0] // 'filter failed' } }

# The first header field called $name (case-insensitive), unfolded, or undef.
sub header {
    my ($req, $name) = @_;
    my ($head) = split /\r?\n\r?\n/, $req->{body}, 2;
    $head //= '';
    $head =~ s/\r?\n[ \t]+/ /g;
    for my $line (split /\r?\n/, $head) {
        return $1 if $line =~ /^\Q$name\E[ \t]*:[ \t]*(.*?)\s*$/i;
    }
    return undef;
}

# ---- encoding: by key, so that a number never leaves as a str or back -------

my %KIND = (id => 'u', version => 'u', max_message_size => 'u', max_frame => 'u',
    max_inflight => 'u', index => 'u', score => 'f', body => 'b',
    commands => 'as', actions => 'as', tags => 'as', edits => 'edits');

sub _len_hdr {
    my ($n, $fix, $fixmax, @w) = @_;    # @w: [tag, pack] for 8/16/32 bit
    return chr($fix | $n) if defined $fix && $n <= $fixmax;
    for my $t (@w) {
        my ($tag, $fmt, $max) = @$t;
        return chr($tag) . pack($fmt, $n) if $n <= $max;
    }
}
sub _str { my $s = shift; utf8::encode($s) if utf8::is_utf8($s);
    _len_hdr(length $s, 0xa0, 31, [0xd9, 'C', 255], [0xda, 'n', 65535], [0xdb, 'N', 2**32 - 1]) . $s }
sub _bin { my $s = shift;
    _len_hdr(length $s, undef, 0, [0xc4, 'C', 255], [0xc5, 'n', 65535], [0xc6, 'N', 2**32 - 1]) . $s }
sub _uint { my $v = shift; $v < 128 ? chr($v) : $v < 2**8 ? "\xcc" . pack('C', $v)
    : $v < 2**16 ? "\xcd" . pack('n', $v) : $v < 2**32 ? "\xce" . pack('N', $v) : "\xcf" . pack('Q>', $v) }
sub _arr_hdr { _len_hdr($_[0], 0x90, 15, [0xdc, 'n', 65535], [0xdd, 'N', 2**32 - 1]) }
sub _map_hdr { _len_hdr($_[0], 0x80, 15, [0xde, 'n', 65535], [0xdf, 'N', 2**32 - 1]) }

sub _enc_map {
    my ($h) = @_;
    my @k = sort { ($a eq 'body') <=> ($b eq 'body') || $a cmp $b } keys %$h;
    my $out = _map_hdr(scalar @k);
    for my $k (@k) {
        my $v = $h->{$k};
        my $kind = $KIND{$k} // 's';
        $out .= _str($k);
        if    ($kind eq 'u')     { $out .= _uint($v) }
        elsif ($kind eq 'f')     { $out .= "\xcb" . pack('d>', $v) }
        elsif ($kind eq 'b')     { $out .= _bin($v) }
        elsif ($kind eq 'as')    { $out .= _arr_hdr(scalar @$v) . join '', map { _str($_) } @$v }
        elsif ($kind eq 'edits') { $out .= _arr_hdr(scalar @$v) . join '', map { _enc_map($_) } @$v }
        else                     { $out .= _str("$v") }
    }
    return $out;
}

sub _frame { my $m = _enc_map($_[0]); pack('N', length $m) . $m }

# ---- decoding: walk the octets first, then let Data::MessagePack unpack ------
# The walk refuses what msgpack libraries disagree on or trust blindly:
# truncation, depth, object count, containers claiming more than the frame,
# duplicate str keys (str/bin payloads are skipped, not read octet by octet).

my %FIXED = (0xca => 4, 0xcb => 8, 0xcc => 1, 0xcd => 2, 0xce => 4, 0xcf => 8,
    0xd0 => 1, 0xd1 => 2, 0xd2 => 4, 0xd3 => 8, 0xd4 => 2, 0xd5 => 3, 0xd6 => 5,
    0xd7 => 9, 0xd8 => 17);
my %LEN = (0xc4 => 1, 0xc5 => 2, 0xc6 => 4, 0xd9 => 1, 0xda => 2, 0xdb => 4,
    0xc7 => 1, 0xc8 => 2, 0xc9 => 4);
my %CONT = (0xdc => [2, 1], 0xdd => [4, 1], 0xde => [2, 2], 0xdf => [4, 2]);

sub _be { my ($s) = @_; my $v = 0; $v = $v * 256 + ord($_) for split //, $s; $v }

sub _scan {
    my ($b, $pos, $depth, $count) = @_;    # returns (pos, str payload|undef)
    my $len = length $$b;
    die "bad_frame:truncated\n" if $pos >= $len;
    die "bad_frame:too many objects\n" if ++$$count > MAX_OBJECTS;
    my $t = ord substr $$b, $pos++, 1;
    my $take = sub { die "bad_frame:truncated\n" if $len - $pos < $_[0]; $pos + $_[0] };
    return ($pos, undef) if $t <= 0x7f || $t >= 0xe0 || $t == 0xc0 || $t == 0xc2 || $t == 0xc3;
    if ($t >= 0xa0 && $t <= 0xbf) {
        my $end = $take->($t & 0x1f);
        return ($end, substr $$b, $pos, $end - $pos);
    }
    return ($take->($FIXED{$t}), undef) if $FIXED{$t};
    if ($LEN{$t}) {
        my $w = $LEN{$t};
        my $n = _be(substr $$b, $pos, $take->($w) - $pos) + ($t >= 0xc7 && $t <= 0xc9 ? 1 : 0);
        $pos += $w;
        my $end = $take->($n);
        return ($end, $t >= 0xd9 ? substr($$b, $pos, $n) : undef);
    }
    die "bad_frame:reserved octet 0xc1\n" if $t == 0xc1;
    my ($n, $per);
    if    ($t >= 0x80 && $t <= 0x8f) { ($n, $per) = ($t & 0x0f, 2) }
    elsif ($t >= 0x90 && $t <= 0x9f) { ($n, $per) = ($t & 0x0f, 1) }
    else {
        my ($w, $p) = @{ $CONT{$t} };
        $n = _be(substr $$b, $pos, $take->($w) - $pos);
        $pos += $w;
        $per = $p;
    }
    die "bad_frame:nested too deeply\n" if $depth >= MAX_DEPTH;
    die "bad_frame:container larger than the frame\n" if $n * $per > $len - $pos;
    my %seen;
    for (1 .. $n) {
        my $key;
        ($pos, $key) = _scan($b, $pos, $depth + 1, $count);
        next if $per == 1;
        die "bad_frame:duplicate key\n" if defined $key && $seen{$key}++;
        ($pos) = _scan($b, $pos, $depth + 1, $count);
    }
    return ($pos, undef);
}

my $MP = Data::MessagePack->new;

sub _decode {
    my ($data) = @_;
    my $count = 0;
    my ($end) = _scan(\$data, 0, 0, \$count);
    die "bad_frame:octets after the map\n" if $end != length $data;
    my $m = eval { $MP->unpack($data) };
    die "bad_frame:malformed msgpack\n" unless defined $m;
    die "bad_frame:frame is not a map\n" unless ref $m eq 'HASH';
    die "bad_frame:no \"type\" string\n" unless _is_str($m->{type});
    return $m;
}

# Right after decoding, a msgpack int is a Perl number without a string
# value, a msgpack str a string: the SV flags tell them apart.
sub _is_uint {
    my ($v) = @_;
    return 0 if !defined $v || ref $v;
    my $f = B::svref_2object(\$v)->FLAGS;
    return ($f & B::SVf_IOK) && !($f & B::SVf_POK) && $v >= 0;
}
sub _is_str  { defined $_[0] && !ref $_[0] && (B::svref_2object(\$_[0])->FLAGS & B::SVf_POK) }
sub _is_bool { ref $_[0] eq 'Data::MessagePack::Boolean' }

sub _check_request {
    my ($m) = @_;
    my $id = _is_uint($m->{id}) ? $m->{id} : undef;
    my $bad = sub { die { code => 'bad_frame', message => "request.$_[0]", id => $id } };
    $bad->('id') unless defined $id;
    $bad->('deadline_ms') unless _is_uint($m->{deadline_ms});
    my ($s, $msg) = @$m{qw(session message)};
    $bad->('session') unless ref $s eq 'HASH' && ref $msg eq 'HASH';
    _is_str($s->{$_}) or $bad->("session.$_") for qw(id client user upstream_host);
    $bad->('session.upstream_port') unless _is_uint($s->{upstream_port}) && $s->{upstream_port} <= 65535;
    _is_bool($s->{$_}) or $bad->("session.$_") for qw(tls_client tls_upstream);
    _is_uint($msg->{$_}) or $bad->("message.$_") for qw(number size);
    $bad->('message.uidl') if defined $msg->{uidl} && !_is_str($msg->{uidl});
    $bad->('message.command') unless _is_str($msg->{command}) && $msg->{command} =~ /^(RETR|TOP)\z/;
    $bad->('message.top_lines') if $msg->{command} eq 'TOP' && !_is_uint($msg->{top_lines});
    $bad->('body') unless defined $m->{body} && !ref $m->{body};
    return $id;
}

# ---- the server -------------------------------------------------------------

sub run {
    my (%o) = @_;
    my $name = $o{name} or die "POP3Filter::run: name required\n";
    my @actions = @{ $o{actions} // [] };
    $ACTIONS{$_} or die "POP3Filter::run: unknown action $_\n" for @actions;
    my $inflight = $o{max_inflight} // 16;
    my $log = $o{log} // sub { print STDERR "$name: $_[0]\n" };
    my $path;
    GetOptions('socket=s' => \$path) && defined $path
        or die "usage: $0 --socket PATH\n";

    if (-S $path) {    # stale from a crash, unless someone answers
        IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $path)
            and die "$name: another filter listens on $path\n";
        unlink $path;
    }
    my $lsn = IO::Socket::UNIX->new(Type => SOCK_STREAM, Local => $path, Listen => 128)
        or die "$name: listen $path: $!\n";
    $lsn->blocking(0);
    $log->("listening on $path");
    my ($draining, %c) = (0);
    local $SIG{TERM} = sub { $draining++ };
    local $SIG{INT}  = sub { $draining++ };
    local $SIG{PIPE} = 'IGNORE';
    my $sel = IO::Select->new($lsn);

    my $send = sub { my ($c, $m) = @_; $c->{out} .= _frame($m) };
    my $error = sub {
        my ($c, $code, $msg, $id) = @_;
        $send->($c, { type => 'error', code => $code, message => $msg, (defined $id ? (id => $id) : ()) });
    };
    my $verdict = sub {
        my ($c, $req) = @_;
        my $v = eval { $o{on_message}->($req) };
        if (!$v || ref $v ne 'HASH') {
            my $why = $@ || "handler returned no verdict\n";
            chomp $why;
            $log->("message $req->{id}: $why");
            return $error->($c, 'internal', substr($why, 0, 4000), $req->{id});
        }
        return $send->($c, { %$v, id => $req->{id} }) if ($v->{type} // '') eq 'error';
        my %need = map { $_ => 1 } grep { $v->{action} eq $_ } qw(replace reject tempfail);
        $need{edit_headers} = 1 if $v->{edits} && @{ $v->{edits} };
        if (my @no = grep { !$c->{granted}{$_} } sort keys %need) {
            # Enforced here, never sent: the proxy would refuse it anyway.
            $log->("message $req->{id}: action(s) @no not declared or not granted");
            return $error->($c, 'internal', "filter used @no without a grant", $req->{id});
        }
        $send->($c, { type => 'verdict', %$v, id => $req->{id} });
    };
    my $frame = sub {    # one frame; returns 0 to close after flushing
        my ($c, $data) = @_;
        my $m = eval { _decode($data) };
        if (!$m) {
            my ($code, $msg) = $@ =~ /^(\w+):(.*)/ ? ($1, $2) : ('bad_frame', $@);
            $error->($c, $code, $msg);
            return $c->{ready};
        }
        my $t = $m->{type};
        if (!$c->{ready}) {
            if ($t ne 'hello' || ref $m->{versions} ne 'ARRAY' || ref $m->{capabilities} ne 'ARRAY'
                || !_is_uint($m->{max_inflight}) || !$m->{max_inflight}) {
                $error->($c, 'bad_frame', 'expected a valid hello first');
                return 0;
            }
            if (!grep { _is_uint($_) && $_ == 1 } @{ $m->{versions} }) {
                $error->($c, 'version', 'this filter speaks version 1');
                return 0;
            }
            my %caps = map { $_ => 1 } grep { _is_str($_) } @{ $m->{capabilities} };
            $c->{granted} = { map { $_ => 1 } grep { $caps{$_} } @actions };
            $c->{window} = $m->{max_inflight} < $inflight ? $m->{max_inflight} : $inflight;
            $send->($c, { type => 'hello_ack', version => 1, filter => $name,
                commands => ['retr'], actions => \@actions, max_message_size => 0,
                max_frame => MAX_FRAME, max_inflight => $inflight });
            $c->{ready} = 1;
            return 1;
        }
        if ($t eq 'request') {
            my $id = eval { _check_request($m) };
            if (!defined $id) {
                my $e = ref $@ ? $@ : { code => 'bad_frame', message => "$@" };
                $error->($c, $e->{code}, $e->{message}, $e->{id});
                return 1;
            }
            if ($m->{message}{command} eq 'TOP') {
                $error->($c, 'unsupported', 'TOP not wanted', $id);
                return 1;
            }
            my %req = (id => $id, deadline_ms => $m->{deadline_ms}, session => $m->{session},
                body => $m->{body}, %{ $m->{message} });
            $verdict->($c, \%req);
        } elsif ($t eq 'ping') {
            _is_uint($m->{id}) ? $send->($c, { type => 'pong', id => $m->{id} })
                : $error->($c, 'bad_frame', 'ping.id');
        } elsif ($t eq 'error') {
            $log->("proxy reports $m->{code}: " . ($m->{message} // ''));
        } elsif ($t eq 'cancel' || $t eq 'pong') {
            # Handlers run to completion before the next frame: nothing to stop.
        } elsif ($t eq 'hello') {
            $error->($c, 'bad_frame', 'second hello');
        } else {
            $error->($c, 'unsupported', 'unexpected message type');
        }
        return 1;
    };
    my $close = sub { my ($fh) = @_; $sel->remove($fh); delete $c{ fileno $fh }; close $fh };

    while (1) {
        if ($draining && $lsn) {
            $log->("draining " . scalar(keys %c) . " connection(s)");
            $sel->remove($lsn);
            close $lsn;
            undef $lsn;
            unlink $path;
            for my $cn (values %c) {
                $send->($cn, { type => 'drain', reason => 'SIGTERM' }) if $cn->{ready};
                $cn->{closing} = 1 unless $cn->{ready};
                $cn->{last_io} = time;
            }
        }
        for my $cn (values %c) {    # flush; close what is finished
            while (length $cn->{out}) {
                my $n = syswrite $cn->{fh}, $cn->{out};
                if (defined $n) { substr($cn->{out}, 0, $n) = ''; next }
                last if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
                $cn->{out} = '';
                $cn->{closing} = 1;
            }
            # Draining: a quiet moment first, for requests that crossed
            # our "drain" (handlers finish before the next frame is read).
            $close->($cn->{fh}) if !length $cn->{out} && ($cn->{closing}
                || ($draining && time - $cn->{last_io} >= DRAIN_QUIET));
        }
        last if $draining && !%c;
        my $wsel = IO::Select->new(map { $_->{fh} } grep { length $_->{out} } values %c);
        my ($r) = IO::Select->select($sel, $wsel, undef, $draining ? 0.05 : 0.5);
        for my $fh (@{ $r // [] }) {
            if ($lsn && $fh == $lsn) {
                while (my $new = $lsn->accept) {
                    $new->blocking(0);
                    $sel->add($new);
                    $c{ fileno $new } = { fh => $new, in => '', out => '' };
                }
                next;
            }
            my $cn = $c{ fileno $fh } or next;
            my $n = sysread $fh, $cn->{in}, 1 << 16, length $cn->{in};
            next if !defined $n && ($! == EAGAIN || $! == EINTR);
            if (!$n) { $cn->{closing} = 1; $cn->{out} = ''; next }
            $cn->{last_io} = time;
            while (!$cn->{closing} && length $cn->{in} >= 4) {
                my $len = unpack 'N', $cn->{in};
                if ($len > MAX_FRAME) {    # refused before reading it
                    $error->($cn, 'too_large', "frame of $len octets");
                    $cn->{closing} = 1;
                    last;
                }
                last if length $cn->{in} < 4 + $len;
                my $data = substr $cn->{in}, 4, $len;
                substr($cn->{in}, 0, 4 + $len) = '';
                if (!$len) { $error->($cn, 'bad_frame', 'empty frame'); next }
                $cn->{closing} = 1 unless $frame->($cn, $data);
            }
        }
    }
    $log->("drained");
    exit 0;
}

1;
