#!/usr/bin/env bash
# Cross-compiles superpeer for the boards it runs on: static (CGO off),
# -trimpath, stripped, version-stamped. Usage: firmware/cross.sh OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
mkdir -p "$out"
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
ldflags="-s -w -X github.com/superpeer/superpeer/superpeer.Version=$version"

# name GOOS GOARCH extra-env
targets=(
  "linux-amd64 linux amd64"
  "linux-arm64 linux arm64"
  "linux-armv7 linux arm GOARM=7"
  "linux-armv6 linux arm GOARM=6"
  "linux-mipsle-softfloat linux mipsle GOMIPS=softfloat"
  "linux-mips-softfloat linux mips GOMIPS=softfloat"
)
printf '%-34s %10s\n' BINARY BYTES
for t in "${targets[@]}"; do
  read -r name goos goarch extra <<<"$t"
  env CGO_ENABLED=0 GOOS="$goos" GOARCH="$goarch" ${extra:+$extra} \
    go build -trimpath -ldflags "$ldflags" -o "$out/superpeer-$name" ./cmd/superpeer
  printf '%-34s %10d\n' "superpeer-$name" "$(stat -c %s "$out/superpeer-$name")"
done
