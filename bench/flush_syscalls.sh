#!/usr/bin/env bash
# flush_syscalls: the system calls one FLUSH costs the engine, apart from the writes' own
# (issue 12). For each case it runs thin_flush_workload twice under `strace -f -y`: with a
# FLUSH every N writes (F flushes), and with the same writes and one FLUSH at the end. Both
# runs do the same setup, writes and teardown, so
#     per FLUSH = (calls with F flushes - calls with 1 flush) / (F - 1)
# by system call and by the file it acts on (the pool's data, metadata, catalog...). Every
# thread is traced, so work the engine hands to a background thread counts too.
#
# Usage: bench/flush_syscalls.sh PATH/TO/thin_flush_workload [--before PATH] [--flushes F] [--keep]
#   --before PATH  also the thin_flush_workload of an earlier build: a column "before" next
#                  to each case
#   --flushes F    flushes in the flushing run (default 64)
#   --keep         keep the traces (the directory is printed)
# The pool goes where thin_flush_workload puts it: TP_BENCH_DIR, TMPDIR or /tmp (not tmpfs).
set -euo pipefail

usage() {
  echo "usage: $0 PATH/TO/thin_flush_workload [--before PATH] [--flushes F] [--keep]" >&2
  exit 2
}
[ $# -ge 1 ] || usage
WORKLOAD=$(realpath "$1")
shift
BEFORE=
FLUSHES=64
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --before)
      BEFORE=$(realpath "${2:?}")
      shift 2
      ;;
    --flushes)
      FLUSHES=${2:?}
      shift 2
      ;;
    --keep)
      KEEP=1
      shift
      ;;
    *) usage ;;
  esac
done
[ "$FLUSHES" -ge 2 ] || usage
workloads=("$WORKLOAD")
[ -z "$BEFORE" ] || workloads+=("$BEFORE")
for w in "${workloads[@]}"; do
  [ -x "$w" ] || {
    echo "flush_syscalls: $w is not executable (make build)" >&2
    exit 1
  }
done
command -v strace >/dev/null 2>&1 || {
  echo "flush_syscalls: strace is not installed (make deps)" >&2
  exit 1
}

T=$(mktemp -d)
cleanup() {
  if [ "$KEEP" = 1 ]; then echo "flush_syscalls: traces kept in $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT

# The cases: target and writes per FLUSH. fresh/32 is the peer benchmark's row e.
CASES=("fresh 1" "fresh 32" "mapped 32")

# count TRACE: "syscall file<TAB>calls" for a `strace -f -y -o` trace. file is the base name of
# what the call acts on: the path argument of an *at call, else the fd's path (first
# argument), else the first path argument; "-" when there is none. Names that differ from run
# to run (the temp dir, pipe numbers) are folded into one.
count() {
  awk '
    { sub(/^[0-9]+ +/, "") }
    /^(<\.\.\.|---|\+\+\+)/ { next }   # resumed calls, signals, exits
    {
      i = index($0, "(")
      if (i == 0) next
      name = substr($0, 1, i - 1)
      rest = substr($0, i + 1)
      fd = ""
      if (match(rest, /^[0-9]+<[^>]*>/)) fd = substr(rest, RSTART, RLENGTH)
      str = ""
      # A quoted argument with an escape is data (a buffer), not a path.
      if (match(rest, /"[^"\\]*"/)) str = substr(rest, RSTART + 1, RLENGTH - 2)
      if (name ~ /at$/ && str != "") file = str
      else if (fd != "") file = fd
      else if (str != "") file = str
      else file = "-"
      sub(/>$/, "", file)
      sub(/^.*\//, "", file)
      sub(/:\[[0-9]+\]$/, "", file)            # pipe:[1234] -> pipe
      if (file ~ /^tp_[a-z_]+\./) file = "(temp dir)"
      n[name " " file]++
    }
    END { for (k in n) printf "%s\t%d\n", k, n[k] }
  ' "$1"
}

# run_case WORKLOAD TAG TARGET EVERY: writes $T/TAG.diff, "syscall file<TAB>per FLUSH".
run_case() {
  local workload=$1 tag=$2 target=$3 every=$4 writes=$(($4 * FLUSHES)) out
  for mode in with without; do
    local arg=$every
    [ "$mode" = with ] || arg=0
    out=$(strace -f -qq -y -o "$T/$tag.$mode.trace" "$workload" "$target" "$writes" "$arg")
    case "$mode" in
      with) [ "$out" = "flushes $FLUSHES" ] ;;
      without) [ "$out" = "flushes 1" ] ;;
    esac || {
      echo "flush_syscalls: $target $writes $arg printed '$out'" >&2
      exit 1
    }
    count "$T/$tag.$mode.trace" >"$T/$tag.$mode"
    rm -f "$T/$tag.$mode.trace"
  done
  # "key<TAB>per flush", every key of either run.
  awk -F'\t' -v d=$((FLUSHES - 1)) '
    FNR == NR { w[$1] = $2; next }
    { wo[$1] = $2 }
    END {
      for (k in w) printf "%s\t%.3f\n", k, (w[k] - wo[k]) / d
      for (k in wo) if (!(k in w)) printf "%s\t%.3f\n", k, -wo[k] / d
    }
  ' "$T/$tag.with" "$T/$tag.without" >"$T/$tag.diff"
}

echo "syscalls per FLUSH (strace -f; $FLUSHES flushes against 1, same writes; 4 KiB writes)"
files=()
header="syscall file"
for c in "${CASES[@]}"; do
  read -r target every <<<"$c"
  if [ -n "$BEFORE" ]; then
    run_case "$BEFORE" "before-$target-$every" "$target" "$every"
    files+=("$T/before-$target-$every.diff")
    header+=$'\t'"$target/$every before"
  fi
  run_case "$WORKLOAD" "$target-$every" "$target" "$every"
  files+=("$T/$target-$every.diff")
  header+=$'\t'"$target/$every"
done
echo "cases: fresh|mapped/writes per FLUSH"

# One row a (syscall, file) with at least 0.05 per FLUSH in some case; the rest summed in
# "(others)"; then the total.
awk -F'\t' -v header="$header" -v ncol=${#files[@]} '
  FNR == 1 { col++ }
  { v[$1, col] = $2; keys[$1] = 1 }
  END {
    nh = split(header, h, "\t")
    printf "%-28s", h[1]
    for (c = 2; c <= nh; c++) printf " %18s", h[c]
    printf "\n"
    nk = 0
    for (k in keys) sorted[++nk] = k
    for (i = 2; i <= nk; i++) {   # insertion sort: awk has no portable sort
      x = sorted[i]
      for (j = i - 1; j >= 1 && sorted[j] > x; j--) sorted[j + 1] = sorted[j]
      sorted[j + 1] = x
    }
    for (i = 1; i <= nk; i++) {
      k = sorted[i]
      show = 0
      for (c = 1; c <= ncol; c++) {
        x = v[k, c] + 0
        total[c] += x
        if (x >= 0.05 || x <= -0.05) show = 1
      }
      for (c = 1; c <= ncol; c++) if (!show) others[c] += v[k, c]
      if (!show) continue
      printf "%-28s", k
      for (c = 1; c <= ncol; c++) printf " %18.2f", v[k, c]
      printf "\n"
    }
    printf "%-28s", "(others)"
    for (c = 1; c <= ncol; c++) printf " %18.2f", others[c]
    printf "\n%-28s", "total"
    for (c = 1; c <= ncol; c++) printf " %18.2f", total[c]
    printf "\n"
  }
' "${files[@]}"
