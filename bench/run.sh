#!/usr/bin/env bash
# `make bench`: every benchmark of the project. Each bench/*.sh measures one
# area against its baseline (coturn, Kamailio, the physical limit) in the
# same run and replaces its own section of docs/BENCHMARKS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
for b in bench/*.sh; do
  case "$b" in bench/run.sh|bench/section.sh) continue ;; esac
  [ -x "$b" ] || continue
  printf '\n== %s\n' "$b"
  "$b" || { echo "$b failed"; status=1; }
done
printf '\n== go test -bench (micro-benchmarks beside the code)\n'
go test -run '^$' -bench . -benchmem -count 1 ./... | grep -E '^(Benchmark|ok|FAIL|---)' || status=1
exit $status
