#!/bin/sh
# run.sh: runs libFuzzer targets one after another (the machine is shared),
# each for a given time, and says how far each got. Used by make fuzz.
# Usage: tests/fuzz/run.sh SECONDS build/fuzz/fuzz_x ...
set -u
secs=$1; shift
fail=0
for bin in "$@"; do
	t=$(basename "$bin")
	work=build/fuzz/corpus/$t	# grows here, not in the repository
	art=build/fuzz/crashes/$t/
	mkdir -p "$work" "$art"
	log=build/fuzz/$t.log
	start=$(date +%s)
	# A whole session needs room: scripts of several messages.
	extra=
	[ "$t" = fuzz_session ] && extra=-max_len=16384
	# The seeds (tests/fuzz/corpus/$t) run first, so a known crashing
	# input kept there fails at once: the regression test.
	"$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 $extra \
	    -print_final_stats=1 -artifact_prefix="$art" \
	    "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1
	rc=$?
	wall=$(( $(date +%s) - start ))
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
	if [ $rc -eq 0 ]; then
		echo "fuzz: $t ok, ${execs:-?} executions in ${wall} s"
	else
		fail=1
		echo "fuzz: $t FAILED (exit $rc) after ${wall} s; log $log, input in $art" >&2
		grep -m1 -E 'ERROR: |invariant failed|runtime error' "$log" >&2
	fi
done
exit $fail
