// Package firmware holds the release builds of superpeer: cross-compiled
// static binaries (cross.sh), the OpenWrt package with its procd init
// script, UCI translation and fw4 firewall include (openwrt/), the Debian /
// Raspberry Pi OS package with its sandboxed systemd unit (debian/), both
// built with nfpm (package.sh), and the flash budget (size.sh, sizes/).
// Its tests run the packages' shell scripts off OpenWrt against a stand-in
// for /lib/functions.sh; test-emulated.sh runs the builds under qemu.
package firmware
