// Package firmware holds the release builds of superpeer: cross-compiled
// static binaries, the OpenWrt package (procd, UCI) and the Debian / Raspberry
// Pi OS package (systemd), with a size budget for routers' flash.
package firmware
