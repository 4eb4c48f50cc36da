# /usr/share/superpeer/uci.sh: OpenWrt's /etc/config/superpeer in the
# daemon's terms. Sourced (after /lib/functions.sh) by /etc/init.d/superpeer
# and by the firewall include; POSIX sh, as BusyBox ash runs it.
#
# The UCI file mirrors the daemon's configuration file: a section of type T
# is the daemon's [T], each option is a key of it, and a `list` is a
# comma-separated list. So every key of `superpeer run --print-default-config`
# can be set from UCI, and the daemon refuses a bad one with its reason (the
# error names the generated file's line, whose section and key are the UCI
# section type and option). Sections of type `service` are for this script
# alone (enabled, firewall_zone) and are not passed on.

SUPERPEER_BIN=${SUPERPEER_BIN:-/usr/bin/superpeer}

# superpeer_uci_conf: prints the daemon configuration for the loaded-from-
# scratch /etc/config/superpeer. Returns 1, with the reason on standard
# error, for a value the daemon's format cannot carry (a line break, or a
# comma inside one item of a list).
superpeer_uci_conf() {
	_sp_err=
	_sp_skip=
	_sp_lists=
	echo "# Written from /etc/config/superpeer by /etc/init.d/superpeer; edit that file."
	echo "# Keys not set here keep the built-in defaults (superpeer run --print-default-config)."
	config_cb() {
		_sp_flush_lists
		[ $# -gt 0 ] || return 0
		_sp_section=$1
		if [ "$1" = service ]; then
			_sp_skip=1
			return 0
		fi
		_sp_skip=
		printf '\n[%s]\n' "$1"
	}
	option_cb() {
		[ -z "$_sp_skip" ] || return 0
		_sp_check "$_sp_section.$1" "$2" || return 0
		printf '%s = "%s"\n' "$1" "$2"
	}
	list_cb() {
		[ -z "$_sp_skip" ] || return 0
		_sp_check "$_sp_section.$1" "$2" || return 0
		case "$2" in
		*,*)
			_sp_err="${_sp_err}list $_sp_section.$1: item '$2' contains a comma, which separates items in the daemon's lists
"
			return 0
			;;
		esac
		case " $_sp_lists " in
		*" $1 "*) eval "_sp_list_$1=\"\${_sp_list_$1}, \$2\"" ;;
		*)
			_sp_lists="$_sp_lists $1"
			eval "_sp_list_$1=\$2"
			;;
		esac
	}
	config_load superpeer
	_sp_flush_lists
	reset_cb
	if [ -n "$_sp_err" ]; then
		printf 'superpeer: /etc/config/superpeer: %s' "$_sp_err" >&2
		return 1
	fi
	return 0
}

_sp_flush_lists() {
	local name value
	for name in $_sp_lists; do
		eval "value=\${_sp_list_$name}"
		printf '%s = "%s"\n' "$name" "$value"
		unset "_sp_list_$name"
	done
	_sp_lists=
}

# _sp_check NAME VALUE: refuses a value with a line break.
_sp_check() {
	case "$2" in
	*"
"*)
		_sp_err="${_sp_err}$1: the value has a line break
"
		return 1
		;;
	esac
	return 0
}

# superpeer_conf_get FILE SECTION KEY: the value of KEY in [SECTION] of a
# daemon configuration file, unquoted; empty when not set.
superpeer_conf_get() {
	awk -v want="$2" -v key="$3" '
		/^[ \t]*\[/ { s = $0; gsub(/^[ \t]*\[[ \t]*|[ \t]*\][ \t]*$/, "", s); next }
		s == want {
			line = $0
			sub(/^[ \t]+/, "", line)
			if (substr(line, 1, 1) == "#") next
			i = index(line, "=")
			if (i == 0) next
			k = substr(line, 1, i - 1); v = substr(line, i + 1)
			gsub(/^[ \t]+|[ \t]+$/, "", k); gsub(/^[ \t]+|[ \t]+$/, "", v)
			if (k != key) next
			if (length(v) >= 2 && (substr(v, 1, 1) == "\"" || substr(v, 1, 1) == "'\''") && substr(v, length(v), 1) == substr(v, 1, 1))
				v = substr(v, 2, length(v) - 2)
			found = v
		}
		END { print found }
	' "$1"
}

# superpeer_lan_ports: prints what the LAN must reach of this node for the
# firewall, one "PROTO PORTS" line per rule: ports comma-separated, a range
# as lo-hi. Each address comes from /etc/config/superpeer, else from the
# binary's built-in defaults, so the firewall follows the daemon's own.
superpeer_lan_ports() {
	local conf defaults udp tcp p lo hi
	conf=$(mktemp) && defaults=$(mktemp) || return 1
	if ! superpeer_uci_conf >"$conf" || ! "$SUPERPEER_BIN" run --print-default-config >"$defaults"; then
		rm -f "$conf" "$defaults"
		return 1
	fi
	# SIP and TURN (UDP and TCP) for the LAN's phones; the election is the
	# site's Raft group (TCP); the overlay (UDP) for the site's other
	# peers and its announcements (UDP, on the election port); mDNS (UDP 5353) for LAN discovery (DNS-SD); STUN when this is
	# a public node.
	udp=5353 tcp=
	for p in sip.listen turn.listen overlay.listen election.listen nat.stun_listen nat.stun_alternate; do
		p=$(_sp_port "${p%%.*}" "${p#*.}") && udp="$udp,$p"
	done
	for p in sip.listen turn.listen election.listen sip.tls_listen; do
		p=$(_sp_port "${p%%.*}" "${p#*.}") && tcp="$tcp,$p"
	done
	# TURN relay ports: a LAN host that is the peer of an allocation (see
	# turn.allow_peers) sends its media there.
	lo=$(_sp_value turn relay_port_min)
	hi=$(_sp_value turn relay_port_max)
	rm -f "$conf" "$defaults"
	echo "udp $(_sp_uniq "$udp")"
	echo "tcp $(_sp_uniq "$tcp")"
	[ -n "$lo" ] && [ -n "$hi" ] && echo "udp $lo-$hi"
	return 0
}

# _sp_uniq LIST: the comma-separated LIST without empty or repeated items.
_sp_uniq() {
	echo "$1" | awk -F, '{ for (i = 1; i <= NF; i++) if ($i != "" && !seen[$i]++) out = out (out == "" ? "" : ",") $i; print out }'
}

# _sp_value SECTION KEY: the effective value (UCI, else the defaults);
# uses conf and defaults of superpeer_lan_ports.
_sp_value() {
	local v
	v=$(superpeer_conf_get "$conf" "$1" "$2")
	[ -n "$v" ] || v=$(superpeer_conf_get "$defaults" "$1" "$2")
	echo "$v"
}

# _sp_port SECTION KEY: the port of a listen address, or failure when the
# address is unset.
_sp_port() {
	local v
	v=$(_sp_value "$1" "$2")
	[ -n "$v" ] || return 1
	echo "${v##*:}"
}

# superpeer_firewall_nft ZONE: prints the nft commands that let the zone's
# hosts reach this node's ports: a chain of superpeer's own in fw4's table,
# refilled each time, so applying it twice changes nothing.
superpeer_firewall_nft() {
	local ports proto list
	ports=$(superpeer_lan_ports) || return 1
	echo "add chain inet fw4 superpeer_input"
	echo "flush chain inet fw4 superpeer_input"
	echo "$ports" | while read -r proto list; do
		[ -n "$list" ] || continue
		echo "add rule inet fw4 superpeer_input $proto dport { $(echo "$list" | sed 's/,/, /g') } accept comment \"superpeer ($1)\""
	done
}

# superpeer_firewall: applies superpeer_firewall_nft to fw4's ruleset and
# makes the zone's input chain jump to it (once). Does nothing when the
# service is disabled or fw4 is not running.
superpeer_firewall() {
	local enabled zone
	config_load superpeer
	config_get_bool enabled service enabled 1
	config_get zone service firewall_zone lan
	[ "$enabled" = 1 ] || return 0
	nft list chain inet fw4 "input_$zone" >/dev/null 2>&1 || return 0
	superpeer_firewall_nft "$zone" | nft -f - || return 1
	nft list chain inet fw4 "input_$zone" | grep -q 'jump superpeer_input' ||
		nft insert rule inet fw4 "input_$zone" jump superpeer_input comment '"superpeer"'
}
