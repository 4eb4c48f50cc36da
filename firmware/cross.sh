#!/usr/bin/env bash
# Cross-compiles superpeer for the boards it runs on: static (CGO off),
# -trimpath, stripped, version-stamped.
#
#   firmware/cross.sh OUTDIR [TARGET...]
#
# With no TARGET, every one below; a TARGET is a name from the first column
# (e.g. linux-mipsle-softfloat). Prints a table of the stripped sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
shift || true
mkdir -p "$out"
# shellcheck source=firmware/version.sh
. firmware/version.sh
ldflags="-s -w -X github.com/superpeer/superpeer/superpeer.Version=$VERSION"

# name GOOS GOARCH extra-env
targets=(
  "linux-amd64 linux amd64"
  "linux-arm64 linux arm64"
  "linux-armv7 linux arm GOARM=7"
  "linux-armv6 linux arm GOARM=6"
  "linux-armv5 linux arm GOARM=5"
  "linux-mipsle-softfloat linux mipsle GOMIPS=softfloat"
  "linux-mips-softfloat linux mips GOMIPS=softfloat"
)
want=" $* "
names=" "
for t in "${targets[@]}"; do names+="${t%% *} "; done
for w in "$@"; do
  [[ $names == *" $w "* ]] || { echo "cross.sh: unknown target $w (known:$names)" >&2; exit 2; }
done
printf '%-34s %10s\n' BINARY BYTES
for t in "${targets[@]}"; do
  read -r name goos goarch extra <<<"$t"
  if [ $# -gt 0 ] && [[ $want != *" $name "* ]]; then
    continue
  fi
  # shellcheck disable=SC2086
  env CGO_ENABLED=0 GOOS="$goos" GOARCH="$goarch" ${extra:+$extra} \
    go build -trimpath -ldflags "$ldflags" -o "$out/superpeer-$name" ./cmd/superpeer
  printf '%-34s %10d\n' "superpeer-$name" "$(stat -c %s "$out/superpeer-$name")"
done
