#!/bin/sh
# fw4 runs this after every firewall (re)load (a `config include` of type
# script in /etc/config/firewall, which /etc/uci-defaults/90-superpeer
# adds): it lets the hosts of the zone named by service.firewall_zone in
# /etc/config/superpeer reach the daemon's SIP, TURN, overlay, election and
# mDNS ports, as configured.
. /lib/functions.sh
. /usr/share/superpeer/uci.sh
superpeer_firewall
