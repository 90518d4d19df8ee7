#!/usr/bin/env bash
# Prints the figures the suites report (crash points, fault runs, model operations, kill
# rounds, NBD requests, malformed-input cases...) from ctest's log of the last run, so
# `make test` and `make check-long` show how much each suite did, not only that it passed.
# Usage: scripts/test-figures.sh BUILD_DIR
set -euo pipefail
log=${1:?usage: $0 BUILD_DIR}/Testing/Temporary/LastTest.log
[ -r "$log" ] || exit 0
echo "== figures of this run (from $log)"
grep -hE '^(crash points|fault runs|metadata read faults|model test|space model|random damage)|^[a-z_0-9]+: (ok|SKIP):|^nbd_stress: [0-9]+ NBD requests' "$log" |
  sort | uniq -c | sed "s/^ *1 /  /; s/^ *\([0-9][0-9]*\) /  (x\1) /"
