#!/usr/bin/perl
# block_senders.pl: example pop3proxyd filter in Perl: rejects mail from
# blocked senders (a From regex) with a notice; stamps everything else.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use POP3Filter qw(run accept_msg reject_msg add_header header);

# Senders to refuse; edit to taste.
my @BLOCKED = (qr/\@(?:spam|junk)\.example\b/i, qr/^"?lottery/i);

run(
    name       => 'block_senders.pl/1.0',
    actions    => [qw(edit_headers reject)],
    on_message => sub {
        my ($req) = @_;
        my $from = header($req, 'From') // '';
        for my $re (@BLOCKED) {
            next unless $from =~ $re;
            return reject_msg("Mail from $from is blocked here.",
                reason => "sender matches $re", tags => ['blocked']);
        }
        return accept_msg(add_header('X-Sender-Check', 'passed'));
    },
);
