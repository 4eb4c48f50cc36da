#!/bin/sh
# Registers superpeer's firewall include with fw4, once (at install, or at
# the first boot of an image that carries the package).
uci -q get firewall.superpeer >/dev/null && exit 0
uci -q batch <<UCI
set firewall.superpeer=include
set firewall.superpeer.type=script
set firewall.superpeer.path=/usr/share/superpeer/firewall.sh
set firewall.superpeer.fw4_compatible=1
commit firewall
UCI
exit 0
