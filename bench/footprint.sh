#!/usr/bin/env bash
# The daemon's resident memory, written to the "## Daemon footprint"
# section of docs/BENCHMARKS.md. As root (the NAT lab): the release build
# of `superpeer run` (static, stripped, as `make build` makes it) with its
# shipped defaults on a LAN host behind a kernel NAT, measured from
# /proc/PID/status (VmRSS now, VmHWM the peak) idle and holding a load of
# 1,000 registrations, 100 TURN allocations and 1,100 pinholes; coturn,
# Debian's turnserver started with an empty config file, measured idle and
# holding the same 100 allocations, in the same run, as the baseline.
# Median of RUNS runs (default 3); see BenchmarkLabFootprint.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
if [ "$(id -u)" != 0 ]; then
  echo "bench/footprint.sh: needs root for the NAT lab; skipped"
  exit 0
fi
command -v turnserver >/dev/null || { echo "bench/footprint.sh: coturn's turnserver not installed; skipped"; exit 0; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/superpeer/superpeer/superpeer.Version=$version" \
  -o "$tmp/superpeer" ./cmd/superpeer
SUPERPEER_BIN="$tmp/superpeer" FOOTPRINT_RUNS="$runs" FOOTPRINT_REPORT="$tmp/report" \
  go test -run '^$' -bench '^BenchmarkLabFootprint$' -benchtime 1x -timeout 60m ./superpeer/
[ -s "$tmp/report" ] || { echo "bench/footprint.sh: the benchmark wrote no report"; exit 1; }
v() { awk -v k="$1" '$1 == k {print $2}' "$tmp/report"; }
mb() { awk -v kb="$1" 'BEGIN {printf "%.1f", kb/1024}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
goal=$((24 * 1024))
size=$(stat -c %s "$tmp/superpeer")
cotv=$(turnserver --version 2>/dev/null | head -1 || true)
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
md="$tmp/section.md"
{
  echo "## Daemon footprint"
  echo
  echo "\`make bench\` (bench/footprint.sh: \`SUPERPEER_BIN=<release build> FOOTPRINT_RUNS=$runs FOOTPRINT_REPORT=out go test -run '^\$' -bench '^BenchmarkLabFootprint\$' -benchtime 1x ./superpeer/\`, as root),"
  echo "$(date -u +%F), linux/amd64, $(nproc) CPUs${cpu:+ ($cpu)}, median of $runs runs. The release build"
  echo "($(mb $((size / 1024))) MB, static, stripped) runs with its shipped defaults on a LAN host behind a kernel"
  echo "NAT, alone in its site, so it is the superpeer. Resident memory from /proc/PID/status: VmRSS when"
  echo "measured, VmHWM the peak since the start. Idle: 5 s after it runs every part. Under load: holding"
  echo "$(v registrations) registrations (one UDP phone each, registered 10 at a time), $(v allocations) TURN allocations"
  echo "(credentials from the control API) with permissions for 10 WAN peers each, and $(v pinholes) pinholes"
  echo "(the keeper holds one per permitted peer, as the relays are behind the NAT, and one per relay's STUN"
  echo "mapping), measured 70 s after the load arrived (the registrations' SIP transactions have ended)."
  echo "coturn${cotv:+ ($cotv)} runs in the same lab with an empty config file and REST credentials, idle and"
  echo "holding the same $(v allocations) allocations and permissions."
  echo
  echo "| | VmRSS | of it the binary's pages | peak (VmHWM) | / 24 MB goal | / coturn idle |"
  echo "|---|---:|---:|---:|---:|---:|"
  echo "| Superpeer idle | $(mb "$(v idle_rss_kb)") MB | $(mb "$(v idle_file_kb)") MB | $(mb "$(v idle_hwm_kb)") MB | $(ratio "$(v idle_rss_kb)" $goal) | $(ratio "$(v idle_rss_kb)" "$(v coturn_idle_rss_kb)") |"
  echo "| Superpeer under load | $(mb "$(v load_rss_kb)") MB | $(mb "$(v load_file_kb)") MB | $(mb "$(v load_hwm_kb)") MB | $(ratio "$(v load_rss_kb)" $goal) | $(ratio "$(v load_rss_kb)" "$(v coturn_idle_rss_kb)") |"
  echo "| coturn idle (baseline) | $(mb "$(v coturn_idle_rss_kb)") MB | | | $(ratio "$(v coturn_idle_rss_kb)" $goal) | 1.00 |"
  echo "| coturn, $(v allocations) allocations only | $(mb "$(v coturn_load_rss_kb)") MB | | $(mb "$(v coturn_load_hwm_kb)") MB | $(ratio "$(v coturn_load_rss_kb)" $goal) | $(ratio "$(v coturn_load_rss_kb)" "$(v coturn_idle_rss_kb)") |"
  echo
  echo "For scale (published figures from the firmware issue, not measured here): tailscaled needs 32 MB"
  echo "resident trimmed and over 64 MB as shipped; Superpeer idle is $(ratio "$(v idle_rss_kb)" $((32 * 1024))) of the first, under load"
  echo "$(ratio "$(v load_rss_kb)" $((32 * 1024))). The binary's pages are file-backed and clean (the kernel can drop them under memory"
  echo "pressure and read them again); the rest is the Go heap, goroutine stacks and the runtime."
  echo "The daemon hands free heap back to the system every 30 s after a burst; \`GOMEMLIMIT\` (e.g. 16MiB)"
  echo "and \`GOGC\` in its environment trade garbage-collector CPU for less."
} > "$md"
cat "$md"
./bench/section.sh "## Daemon footprint" < "$md"
