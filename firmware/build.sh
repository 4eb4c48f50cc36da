#!/usr/bin/env bash
# `make firmware`: the release binaries for every board, the OpenWrt and
# Debian packages, and the size report.
#
#   firmware/build.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
# One version for every step, though the tree may move meanwhile.
# shellcheck source=firmware/version.sh
. firmware/version.sh
echo "== binaries ($out)"
./firmware/cross.sh "$out"
echo
echo "== packages ($out)"
./firmware/package.sh "$out"
echo
echo "== sizes"
./firmware/size.sh --report "$out"
echo
./firmware/size.sh "$out" || echo "firmware: over the size budget: make size fails"
