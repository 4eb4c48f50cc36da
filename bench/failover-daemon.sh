#!/usr/bin/env bash
# Superpeer failover through real daemons, written to its section of
# docs/BENCHMARKS.md. As root: five `superpeer run` processes on one LAN of
# network namespaces behind a kernel NAT with miniupnpd (the router on the
# NAT host itself, a board, a desktop, a desktop agent, a laptop); 100
# phones register through one superpeer, whose process is then killed
# (SIGKILL). Each run measures from the kill until the other superpeer's
# control API shows a newly committed set without the dead one and all 100
# phones answer an OPTIONS it forwards from their bindings. The dead one is
# started again before the next run. 20 runs (FAILOVER_RUNS).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${FAILOVER_RUNS:-20}
if [ "$(id -u)" != 0 ]; then
  echo "bench/failover-daemon.sh: needs root for the NAT lab; skipped"
  exit 0
fi
rows=$(mktemp)
md=$(mktemp)
trap 'rm -f "$rows" "$md"' EXIT

FAILOVER_RUNS="$runs" FAILOVER_DAEMON_REPORT="$rows" go test -run '^$' -bench '^BenchmarkLabDaemonFailover$' -benchtime 1x -timeout 30m ./superpeer/
[ -s "$rows" ] || { echo "bench/failover-daemon.sh: the benchmark wrote no table"; exit 1; }

# The "all runs" row, for the ratios.
median=$(awk -F'|' '$2 ~ /all runs/ {gsub(/ /, "", $5); print $5}' "$rows")
worst=$(awk -F'|' '$2 ~ /all runs/ {gsub(/ /, "", $7); print $7}' "$rows")
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
{
  echo "## Superpeer failover (daemon, SIGKILL)"
  echo
  echo "\`make bench\` (bench/failover-daemon.sh: \`FAILOVER_RUNS=$runs FAILOVER_DAEMON_REPORT=out go test -run '^\$' -bench '^BenchmarkLabDaemonFailover\$' -benchtime 1x ./superpeer/\`, as root),"
  echo "$(date -u +%F), $(nproc) CPUs${cpu:+ ($cpu)}, $runs runs. Five \`superpeer run\` processes with their shipped"
  echo "defaults on one LAN of network namespaces behind a kernel NAT with miniupnpd: the router (on the"
  echo "NAT host, with the WAN address), a board, a desktop, a desktop agent and a laptop, joined with one"
  echo "join token. 100 phones (one UDP socket each) register through one superpeer; its process is"
  echo "killed (SIGKILL). Time from the kill until the site's committed set (read from a peer's control"
  echo "API) has two superpeers without the dead one and each of them reaches all 100 phones (each phone"
  echo "answers an OPTIONS the superpeer forwards from its binding), in milliseconds. Runs alternate"
  echo "between the superpeer that leads the Raft group (the lead is first moved to it by stopping the"
  echo "leader gracefully) and one that follows; the dead one is restarted and the site settles between"
  echo "runs. No registration was lost: every run ends with all 100 phones answering."
  echo
  echo "| killed | runs | min | median | p90 | max |"
  echo "|---|---|---|---|---|---|"
  cat "$rows"
  echo
  echo "Median of all runs ${median} ms, worst ${worst} ms: $(awk -v m="$median" 'BEGIN {printf "%.2f", m/2000}') of the 2 s goal;"
  echo "$(awk -v m="$median" 'BEGIN {printf "%.2f", m/2700}')-$(awk -v m="$median" 'BEGIN {printf "%.2f", m/1700}') of the 1.7-2.7 s that hashicorp/raft's default timeouts take just to elect"
  echo "a leader, $(awk -v m="$median" 'BEGIN {printf "%.2f", m/3600}') of VRRP's 3.6 s, and $(awk -v m="$median" 'BEGIN {printf "%.4f", m/160000}') of the 160-190 s after which an RFC 5626"
  echo "softphone over TCP notices a dead proxy (published figures from the election issue, not"
  echo "measured here). A killed leader costs a Raft election first; a killed follower only the"
  echo "leader's 200 ms before it counts the member down."
} > "$md"
cat "$md"
./bench/section.sh "## Superpeer failover (daemon, SIGKILL)" < "$md"
