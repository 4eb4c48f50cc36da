#!/usr/bin/env bash
# Packages the binaries that firmware/cross.sh put in OUTDIR, with nfpm:
# OpenWrt .ipk (procd, UCI) and Debian / Raspberry Pi OS .deb (systemd).
#
#   firmware/package.sh OUTDIR [PACKAGE...]
#
# PACKAGE is a name from the tables below (ipk-mipsel_24kc, deb-armhf...);
# with none, every package whose binary is in OUTDIR. Prints each package.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
shift || true
# shellcheck source=firmware/version.sh
. firmware/version.sh

NFPM=${NFPM:-github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2}

# OpenWrt: opkg installs a package only for the architecture names in its
# opkg.conf. A static Go binary runs on every board of its CPU family, so
# the names here are the commonest ones; add others as "binary=name", e.g.
#   IPK_EXTRA="linux-armv5=arm_arm926ej-s linux-armv7=arm_cortex-a9_vfpv3-d16"
ipk=(
  "linux-mipsle-softfloat=mipsel_24kc"       # MediaTek MT7621/MT76x8 (ramips)
  "linux-mips-softfloat=mips_24kc"           # Qualcomm Atheros (ath79)
  "linux-armv7=arm_cortex-a7_neon-vfpv4"     # ipq40xx, sunxi
  "linux-arm64=aarch64_cortex-a53"           # MediaTek Filogic, mt7622
)
# shellcheck disable=SC2206
ipk+=(${IPK_EXTRA:-})
# Debian: Raspberry Pi OS's 32-bit armhf is ARMv6 with VFP (Pi 1 and Zero),
# so armhf carries the armv6 binary, which runs on every Pi and on
# Debian's ARMv7 armhf too.
deb=(
  "linux-amd64=amd64"
  "linux-arm64=arm64"
  "linux-armv6=armhf"
)

tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
nfpm() {
  if [ ! -x "$tools/nfpm" ]; then
    # go install of a versioned path keeps nfpm out of go.mod.
    GOBIN=$tools GOFLAGS=-mod=mod go install "$NFPM"
  fi
  "$tools/nfpm" "$@"
}

want=" $* "
build() { # kind binary arch
  local kind=$1 bin=$2 arch=$3 name="$1-$3" cfg f log
  if [ "$want" != "  " ] && [[ $want != *" $name "* ]]; then
    return 0
  fi
  if [ ! -f "$out/superpeer-$bin" ]; then
    if [ "$want" != "  " ]; then
      echo "package.sh: $name needs $out/superpeer-$bin (firmware/cross.sh $out $bin)" >&2
      return 1
    fi
    return 0
  fi
  case $kind in
  ipk) cfg=firmware/openwrt/nfpm.yaml ;;
  deb) cfg=firmware/debian/nfpm.yaml ;;
  esac
  f=$out/superpeer_${PKG_VERSION}_$arch.$kind
  # Packages of other versions for this architecture are stale.
  find "$out" -maxdepth 1 -name "superpeer_*_$arch.$kind" ! -name "$(basename "$f")" -delete
  if ! log=$(PKG_ARCH=$arch BINARY=$out/superpeer-$bin nfpm package --config "$cfg" --packager "$kind" --target "$f" 2>&1); then
    echo "package.sh: nfpm failed for $name:" >&2
    echo "$log" >&2
    return 1
  fi
  printf '%-60s %10d\n' "$(basename "$f")" "$(stat -c %s "$f")"
}

printf '%-60s %10s\n' PACKAGE BYTES
for p in "${ipk[@]}"; do build ipk "${p%%=*}" "${p#*=}"; done
for p in "${deb[@]}"; do build deb "${p%%=*}" "${p#*=}"; done
