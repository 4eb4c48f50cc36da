#!/usr/bin/env bash
# bench/sip.sh: calls per second through one superpeer's SIP proxy, beside
# Kamailio doing the same job in the same run.
#
# Both proxies run on loopback as stateful proxies and registrars (the
# superpeer through superpeer/sip/internal/cmd/sipserve, Kamailio with
# superpeer/sip/testdata/kamailio-bench.cfg: tm, rr, registrar, usrloc in
# memory, and 1 GB of shared memory: its 64 MB default runs out of
# transactions at a few hundred calls per second). A SIPp UAS registers
# bob; a SIPp UAC calls him through the proxy (INVITE, 200, ACK, 10 ms of
# call, BYE, 200 along the Record-Route). A rate passes when every call
# succeeds and 99% of calls get their 200 OK within 200 ms; the capacity
# is the highest passing rate found by doubling and then bisecting. Each
# proxy is measured RUNS times, alternating; the figure is the median. The
# section replaces "## SIP proxy" in docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
STEP_SECONDS=${STEP_SECONDS:-4}
START_RATE=${START_RATE:-250}
MAX_RATE=${MAX_RATE:-8000}
BISECT=${BISECT:-3}
COST_RATE=${COST_RATE:-400}
OURS=127.0.0.1:5060
KAM=127.0.0.1:5080
UAS_PORT=5070

for tool in sipp kamailio; do
  if ! command -v "$tool" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$tool" ]; then
    echo "bench/sip.sh: $tool is not installed (Debian sip-tester, kamailio); skipped"
    exit 0
  fi
done
KAMAILIO=$(command -v kamailio || echo /usr/sbin/kamailio)
MPATH=$(dirname "$(find /usr/lib -name tm.so -path '*kamailio*' | head -1)")

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/sipserve" ./superpeer/sip/internal/cmd/sipserve
scen=superpeer/sip/testdata/sipp
sed -e "s|@LISTEN@|$KAM|" -e "s|@MPATH@|$MPATH/|" superpeer/sip/testdata/kamailio-bench.cfg > "$work/kamailio.cfg"

# The UAS accepts BYEs through either proxy (its check is a regexp).
sed "s|@PROXY@|127\\\\.0\\\\.0\\\\.1:50[68]0|" "$scen/uas.xml" > "$work/uas.xml"
(cd "$work" && exec sipp -sf uas.xml -i 127.0.0.1 -p $UAS_PORT -mp 6000 -nostdin >/dev/null 2>&1) &
pids+=($!)

start_proxy() { # name -> sets proxy_pid
  case $1 in
    superpeer) "$work/sipserve" -udp $OURS 2>"$work/sipserve.log" & ;;
    kamailio) mkdir -p "$work/k"; "$KAMAILIO" -f "$work/kamailio.cfg" -m 1024 -M 32 -DD -E -Y "$work/k" -P "$work/k/pid" 2>"$work/kamailio.log" & ;;
  esac
  proxy_pid=$!
  pids+=("$proxy_pid")
}

stop_proxy() {
  kill "$proxy_pid" 2>/dev/null || true
  wait "$proxy_pid" 2>/dev/null || true
}

register() { # addr: bob registers through the proxy (retried while it starts)
  for _ in $(seq 50); do
    if (cd "$work" && sipp "$1" -sf "$OLDPWD/$scen/register.xml" -s bob -key domain site.test -key uasport $UAS_PORT \
        -i 127.0.0.1 -p 5071 -mp 6100 -m 1 -timeout 2s -timeout_error -nostdin >/dev/null 2>&1); then
      return 0
    fi
    sleep 0.2 # the proxy is still starting: poll again
  done
  echo "bench/sip.sh: registering through $1 failed" >&2
  return 1
}

step() { # addr rate: 0 when every call succeeded and p99 of the response time < 200 ms
  local addr=$1 rate=$2 calls=$(( $2 * STEP_SECONDS )) d rc p99
  d=$(mktemp -d -p "$work")
  rc=0
  (cd "$d" && sipp "$addr" -sf "$OLDPWD/$scen/uac.xml" -s bob -key domain site.test -i 127.0.0.1 -p 5061 -mp 6200 \
      -m $calls -r "$rate" -d 10 -timeout $(( STEP_SECONDS + 40 ))s -timeout_error -trace_rtt -rtt_freq 1 -nostdin \
      >/dev/null 2>&1) || rc=$?
  p99=$(awk -F';' 'NR > 1 { print $2 }' "$d"/*_rtt.csv 2>/dev/null | sort -n |
    awk '{ v[NR] = $1 } END { if (NR == 0) { print 999999; exit } i = int(NR * 0.99); if (i < 1) i = 1; print v[i] }')
  printf '    %-9s %5d calls/s: exit %d, p99 %s ms\n' "$proxy_name" "$rate" "$rc" "$p99" >&2
  rm -rf "$d"
  [ "$rc" -eq 0 ] && [ "$p99" -lt 200 ]
}

cpu_ticks() { # pid: CPU time (clock ticks) of the process and its child processes
  local total=0 p f
  for p in "$1" $(ps -o pid= --ppid "$1"); do
    [ -r "/proc/$p/stat" ] || continue
    read -r -a f < "/proc/$p/stat"
    total=$(( total + f[13] + f[14] ))
  done
  echo "$total"
}

cost() { # addr: the proxy's CPU microseconds per call at a rate both proxies sustain
  local addr=$1 calls=$(( COST_RATE * STEP_SECONDS )) before after d
  d=$(mktemp -d -p "$work")
  before=$(cpu_ticks "$proxy_pid")
  (cd "$d" && sipp "$addr" -sf "$OLDPWD/$scen/uac.xml" -s bob -key domain site.test -i 127.0.0.1 -p 5061 -mp 6200 \
      -m $calls -r "$COST_RATE" -d 10 -timeout $(( STEP_SECONDS + 40 ))s -nostdin >/dev/null 2>&1) || true
  after=$(cpu_ticks "$proxy_pid")
  rm -rf "$d"
  awk -v t=$(( after - before )) -v hz="$(getconf CLK_TCK)" -v n="$calls" 'BEGIN { printf "%.0f", t * 1e6 / hz / n }'
}

capacity() { # addr: the highest passing rate
  local lo=0 hi=0 r=$START_RATE mid
  while [ "$r" -le "$MAX_RATE" ]; do
    if step "$1" "$r"; then lo=$r; r=$(( r * 2 )); else hi=$r; break; fi
  done
  if [ "$hi" -eq 0 ]; then echo "$lo"; return; fi
  for _ in $(seq "$BISECT"); do
    mid=$(( (lo + hi) / 2 ))
    if step "$1" "$mid"; then lo=$mid; else hi=$mid; fi
  done
  echo "$lo"
}

declare -A results=([superpeer]="" [kamailio]="")
declare -A costs=([superpeer]="" [kamailio]="")
for run in $(seq "$RUNS"); do
  for proxy_name in superpeer kamailio; do
    addr=$OURS; [ $proxy_name = kamailio ] && addr=$KAM
    echo "run $run: $proxy_name" >&2
    start_proxy $proxy_name
    register "$addr"
    c=$(capacity "$addr")
    u=$(cost "$addr")
    stop_proxy
    results[$proxy_name]+="$c "
    costs[$proxy_name]+="$u "
    echo "  $proxy_name: $c calls/s, $u µs of CPU per call at $COST_RATE calls/s" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ours=$(echo "${results[superpeer]}" | median)
kam=$(echo "${results[kamailio]}" | median)
ratio=$(awk -v a="$ours" -v b="$kam" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }')
ours_cost=$(echo "${costs[superpeer]}" | median)
kam_cost=$(echo "${costs[kamailio]}" | median)
cost_ratio=$(awk -v a="$ours_cost" -v b="$kam_cost" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }')
spread() { tr ' ' '\n' | grep -v '^$' | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (lo > 0) printf "%.1f", hi / lo; else print "n/a" }'; }
ours_spread=$(echo "${results[superpeer]}" | spread)
kam_spread=$(echo "${results[kamailio]}" | spread)
cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
load=$(cut -d' ' -f1-3 /proc/loadavg)
kver=$("$KAMAILIO" -v 2>/dev/null | awk '/^version:/ { print $3; exit }')

section=$(cat <<EOF
## SIP proxy

\`bench/sip.sh\` (run by \`make bench\`), $(date -u +%Y-%m-%d), $(nproc) cores ($cpu), load average at the end $load.
Calls per second through one stateful proxy and registrar on loopback, SIPp UAC and UAS on the same machine
(INVITE, 200, ACK, 10 ms of call, BYE, 200, Record-Route followed). A rate passes when every call succeeds and 99% of
200 OKs come within 200 ms; the capacity is the highest passing rate (doubling from $START_RATE, then $BISECT bisections,
$STEP_SECONDS s of calls per step). Median of $RUNS runs, the two proxies alternating.

| proxy | calls/s (median) | runs | proxy CPU per call at $COST_RATE calls/s (median) | runs |
| --- | --- | --- | --- | --- |
| superpeer (superpeer/sip on sipgo v1.7.2) | $ours | ${results[superpeer]}| $ours_cost µs | ${costs[superpeer]}|
| Kamailio $kver (tm, rr, registrar, usrloc in memory, sanity, maxfwd) | $kam | ${results[kamailio]}| $kam_cost µs | ${costs[kamailio]}|

Ratio superpeer / Kamailio: **$ratio** in calls per second (higher is better), **$cost_ratio** in CPU per call
(lower is better; the proxy's own processes, read from /proc, while SIPp runs $STEP_SECONDS s of calls at $COST_RATE calls/s).
On two cores SIPp's UAC and UAS use most of the machine at the capacity rates, so the capacity ratio understates
the difference between the proxies; CPU per call compares them alone. The fastest run of a proxy was
$ours_spread (superpeer) and $kam_spread (Kamailio) times its slowest: whatever else runs on the machine moves the capacity
figures far more than either proxy does.
EOF
)
echo "$section"
# BENCH_NO_WRITE=1 measures without touching docs/BENCHMARKS.md.
[ "${BENCH_NO_WRITE:-0}" = 1 ] || echo "$section" | bench/section.sh "## SIP proxy"
