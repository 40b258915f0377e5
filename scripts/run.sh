#!/bin/sh
# make run: start pop3proxyd in the foreground on a loopback port, with the
# reference filter wired in when it is built. Ctrl-C stops everything.
set -eu
cd "$(dirname "$0")/.."

PORT="${POP3PROXY_PORT:-1110}"
LISTEN="127.0.0.1:$PORT"
RUNDIR="${TMPDIR:-/tmp}/pop3proxyd-run.$$"
mkdir -p "$RUNDIR"
FILTER_PID=""

cleanup() {
	[ -n "$FILTER_PID" ] && kill "$FILTER_PID" 2>/dev/null || true
	rm -rf "$RUNDIR"
}
trap cleanup EXIT INT TERM

set -- --listen "$LISTEN"
AS=""
if [ "$(id -u)" = 0 ]; then
	# As root: the proxy drops to nobody once bound, and the filter runs
	# as nobody too, so the proxy can reach its socket.
	chown nobody "$RUNDIR"
	set -- "$@" --user nobody
	AS="setpriv --reuid=nobody --regid=nogroup --clear-groups"
fi
if [ -x bin/pop3filter-ref ]; then
	SOCK="$RUNDIR/filter.sock"
	$AS bin/pop3filter-ref --socket "$SOCK" &
	FILTER_PID=$!
	i=0
	while [ ! -S "$SOCK" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	set -- "$@" --filter "unix:$SOCK" --quarantine "$RUNDIR/quarantine"
	mkdir -p "$RUNDIR/quarantine"
	[ -n "$AS" ] && chown nobody "$RUNDIR/quarantine"
fi

cat <<MSG
pop3proxyd is listening on $LISTEN.
Point your mail client at server 127.0.0.1, port $PORT, no TLS, and log in
as  yourname%pop.example.com:110  (or yourname@pop.example.com) with your
usual password. For instance:  curl -v 'pop3://127.0.0.1:$PORT/' --user 'yourname%pop.example.com:yourpassword'
MSG
[ -n "$FILTER_PID" ] && echo "Every retrieved message passes through bin/pop3filter-ref (socket $SOCK)."
echo "Stop with Ctrl-C."
echo
bin/pop3proxyd "$@" &
PROXY_PID=$!
trap 'kill -TERM $PROXY_PID 2>/dev/null; wait $PROXY_PID; cleanup; exit 0' INT TERM
wait $PROXY_PID
