#!/usr/bin/env bash
# Installs the Debian packages the tests drive (real NATs, real clients and
# servers), when they are missing. Needs root; runs `apt-get update` once
# first, because a fresh machine's package lists are empty.
set -euo pipefail

# command -> package
declare -A need=(
  [ip]=iproute2
  [ss]=iproute2
  [nft]=nftables
  [conntrack]=conntrack
  [miniupnpd]=miniupnpd-nftables
  [upnpc]=miniupnpc
  [sipp]=sip-tester
  [turnserver]=coturn
  [turnutils_uclient]=coturn
  [kamailio]=kamailio
  [qemu-mipsel-static]=qemu-user-static
  [qemu-arm-static]=qemu-user-static
  [dpkg-deb]=dpkg
  [systemd-analyze]=systemd
)

missing=()
for cmd in "${!need[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then
    missing+=("${need[$cmd]}")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing $pkgs (run as root to install them; the tests that need them will be skipped)"
  exit 0
fi
echo "install-deps: installing $pkgs"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Packages that ship services must not start them on the host: the tests
# start their own instances inside network namespaces.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
