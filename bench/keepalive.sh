#!/usr/bin/env bash
# Keepalives per pinhole-hour, measured in the NAT lab (needs root): the
# keeper's schedule against 3600 / lifetime and against a fixed 25 s
# schedule, for 5, 10 and 20 s stream timeouts in parallel sites. Takes
# about three minutes; replaces its section of docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "bench/keepalive.sh: needs root for the NAT lab; skipped"
  exit 0
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
KEEPALIVE_BENCH_OUT="$out" go test -run '^$' -bench '^BenchmarkKeepalivesPerHour$' -benchtime 1x -timeout 15m ./nat/
[ -s "$out" ] || { echo "bench/keepalive.sh: the benchmark wrote no table"; exit 1; }
cat "$out"
./bench/section.sh "## Keepalives per pinhole-hour" < "$out"
