#!/usr/bin/env bash
# The size budget of a router's flash, and the size report.
#
#   firmware/size.sh [OUTDIR]           `make size`: builds the mipsle binary and
#                                       its .ipk into OUTDIR (dist) and fails when
#                                       the binary exceeds SIZE_MAX_BINARY (12MB)
#                                       or the .ipk SIZE_MAX_IPK (4MB)
#   firmware/size.sh --report OUTDIR    markdown: every binary and package in
#                                       OUTDIR, mipsle against a bare net/http
#                                       server built now, and what each module
#                                       costs in the mipsle binary
#   firmware/size.sh --bench OUTDIR     the report, into docs/BENCHMARKS.md
#                                       (## Binary size)
#
# MB is 10^6 bytes; the limits take 12MB, 12MiB or plain bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=check
case "${1:-}" in
--report | --bench) mode=${1#--}; shift ;;
esac
out=${1:-dist}
# shellcheck source=firmware/version.sh
. firmware/version.sh
mipsle=$out/superpeer-linux-mipsle-softfloat
ipk=$out/superpeer_${PKG_VERSION}_mipsel_24kc.ipk
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
go build -o "$tools/sizes" ./firmware/sizes
sizes() { "$tools/sizes" "$@"; }

if [ "$mode" = check ]; then
  ./firmware/cross.sh "$out" linux-mipsle-softfloat >/dev/null
  ./firmware/package.sh "$out" ipk-mipsel_24kc >/dev/null
  echo "size budget (make size): the mipsle binary and the OpenWrt package for it"
  sizes check -max-binary "${SIZE_MAX_BINARY:-12MB}" -max-ipk "${SIZE_MAX_IPK:-4MB}" -binary "$mipsle" -ipk "$ipk"
  exit
fi

report() {
  local tmp base full bin pkg
  if [ ! -f "$mipsle" ] || [ ! -f "$ipk" ]; then
    echo "size.sh: no $mipsle or $ipk (version $PKG_VERSION): run make firmware first" >&2
    return 1
  fi
  tmp=$tools
  # The baseline, built now with the same toolchain and flags: a bare
  # net/http file server.
  mkdir "$tmp/baseline"
  printf 'module baseline\n\ngo 1.26\n' >"$tmp/baseline/go.mod"
  cat >"$tmp/baseline/main.go" <<'GO'
package main

import "net/http"

func main() { http.ListenAndServe(":8080", http.FileServer(http.Dir("."))) }
GO
  (cd "$tmp/baseline" && CGO_ENABLED=0 GOOS=linux GOARCH=mipsle GOMIPS=softfloat \
    go build -trimpath -ldflags '-s -w' -o "$tmp/nethttp" .)
  # The same mipsle build with its symbol table and the linker's
  # reachability graph, for the module costs. go keeps a link's output with
  # the main package's compilation and shows it again when a later build
  # reuses that: -gcflags=-dwarf=true (the default, so the code is the
  # same) gives this build a compilation of its own, so that the graph is
  # not printed by the next release build.
  full=$tmp/superpeer-full
  CGO_ENABLED=0 GOOS=linux GOARCH=mipsle GOMIPS=softfloat \
    go build -trimpath -gcflags=-dwarf=true -ldflags "-dumpdep -X github.com/superpeer/superpeer/superpeer.Version=$VERSION" \
    -o "$full" ./cmd/superpeer 2>"$tmp/dumpdep"
  # Which of the project's parts the daemon links yet: the figures grow as
  # they are wired in, and make size watches the budget meanwhile.
  local linked
  linked=$(GOOS=linux GOARCH=mipsle go list -deps ./cmd/superpeer | sed -n 's|^github.com/superpeer/superpeer/||p' | tr '\n' ' ')
  base=$(stat -c %s "$tmp/nethttp")
  bin=$(stat -c %s "$mipsle")
  pkg=$(stat -c %s "$ipk")
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
  commas() { echo "$1" | sed -e ':a' -e 's/\B[0-9]\{3\}\>/,&/' -e 'ta'; }
  cat <<MD
## Binary size

\`make firmware\` ($(go version | cut -d' ' -f3), $(date -u +%Y-%m-%d), version $VERSION):
static (\`CGO_ENABLED=0\`), \`-trimpath\`, stripped (\`-s -w\`). MB is 10^6 bytes.
\`make size\` fails when the mipsle binary exceeds 12 MB or its .ipk 4 MB.
The project's packages in the daemon at this version: ${linked% }.

$(sizes table "$out"/superpeer-linux-* "$out"/superpeer_"${PKG_VERSION}"_*.ipk "$out"/superpeer_"${PKG_VERSION}"_*.deb)

The mipsle binary against a bare \`net/http\` file server built in the same
run with the same flags, and against published figures:

| linux/mipsle softfloat | bytes | × net/http |
| --- | ---: | ---: |
| bare \`net/http\` server (built now) | $(commas "$base") | 1.00 |
| **superpeer** | $(commas "$bin") | $(ratio "$bin" "$base") |
| superpeer .ipk (gzip) | $(commas "$pkg") | $(ratio "$pkg" "$base") |
| budget: binary | 12,000,000 | $(ratio 12000000 "$base") |
| budget: .ipk | 4,000,000 | $(ratio 4000000 "$base") |
| bare \`net/http\`, issue 8's figure | 6,400,000 | $(ratio 6400000 "$base") |
| tailscaled, trimmed (published) | 16,600,000 | $(ratio 16600000 "$base") |

What each module costs in the mipsle binary (\`go run ./firmware/sizes deps\`):
"its own code" is the bytes of its symbols; "cost" is what the linker would
leave out without it (its code and the code, std included, that only it
keeps alive, from the linker's \`-dumpdep\` graph). Both are scaled to the
stripped size; against a build with and without a module they land within
about 10%. Costs nest (a module's cost includes the modules only it uses).

$(sizes deps -top 20 -pkg ./cmd/superpeer -dumpdep "$tmp/dumpdep" -stripped "$mipsle" -env GOOS=linux -env GOARCH=mipsle -env GOMIPS=softfloat "$full")

Command: \`make firmware\` (runs \`firmware/size.sh --report dist\`);
\`firmware/size.sh --bench dist\` writes this section.
MD
}

case $mode in
report) report ;;
bench) report | ./bench/section.sh "## Binary size" && echo "docs/BENCHMARKS.md: ## Binary size updated" ;;
esac
