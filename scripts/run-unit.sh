#!/bin/sh
# Runs every C unit test binary given, keeps a log of each in build/test-logs/,
# and prints the sum as "unit: N passed, N failed".
set -u
mkdir -p build/test-logs
pass=0 fail=0 bad=0
for t in "$@"; do
  log="build/test-logs/$(basename "$t").log"
  if "$t" >"$log" 2>&1; then st=ok; else st=FAILED; bad=$((bad + 1)); fi
  line=$(grep -E '^unit .*: [0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
  p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
  f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
  [ -n "$line" ] || { p=0; f=1; }
  pass=$((pass + p)); fail=$((fail + f))
  printf '%-40s %s (%s passed, %s failed)\n' "$(basename "$t")" "$st" "$p" "$f"
  [ "$st" = ok ] || sed 's/^/    /' "$log" | tail -n 30
done
echo "unit: $pass passed, $fail failed"
[ "$bad" -eq 0 ] && [ "$fail" -eq 0 ]
