# Shared setup for the end-to-end scripts: source it as
#   . "$(dirname "$0")/lib/common.sh" "$@"
# It takes the thinpool binary as $1, makes a temp dir $T (removed on exit), the pool
# path $P, and the helpers below.
set -euo pipefail

NAME=$(basename "$0" .sh)
TP=$(realpath "${1:?usage: $0 PATH/TO/thinpool}")
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
unset THINPOOL_POOL
P=$T/pool
MiB=1048576

# tp ARGS...: thinpool on the test pool.
tp() { "$TP" -p "$P" "$@"; }
fail() { echo "$NAME: FAIL: $*" >&2; exit 1; }
# json EXPR: evaluates a python expression over the JSON document on stdin (as j).
json() { python3 -c "import json,sys; j=json.load(sys.stdin); sys.exit(0 if ($1) else 1)"; }
