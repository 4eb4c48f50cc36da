# A minimal stand-in for OpenWrt's /lib/functions.sh, for testing the
# package's scripts off OpenWrt: config_load, config_get, config_get_bool,
# reset_cb and the config/option/list callbacks, with OpenWrt's semantics.
#
# config_load PACKAGE reads $UCI_CONFIG_DIR/PACKAGE. A UCI file in the form
# `uci export` prints (config TYPE 'name', option KEY 'value', list KEY
# 'value', values in shell quoting) is evaluated with config, option and
# list defined as functions, which is how OpenWrt loads it too.

reset_cb() {
	config_cb() { return 0; }
	option_cb() { return 0; }
	list_cb() { return 0; }
}
reset_cb

package() { return 0; }

config() {
	CONFIG_NUM_SECTIONS=$((CONFIG_NUM_SECTIONS + 1))
	CONFIG_SECTION=${2:-cfg$CONFIG_NUM_SECTIONS}
	CONFIG_SECTIONS="${CONFIG_SECTIONS:+$CONFIG_SECTIONS }$CONFIG_SECTION"
	eval "CONFIG_${CONFIG_SECTION}_TYPE=\$1"
	config_cb "$1" "$CONFIG_SECTION"
}

option() {
	local name=$1
	shift
	eval "CONFIG_${CONFIG_SECTION}_${name}=\$*"
	option_cb "$name" "$*"
}

list() {
	local name=$1
	shift
	eval "CONFIG_${CONFIG_SECTION}_${name}=\"\${CONFIG_${CONFIG_SECTION}_${name}:+\${CONFIG_${CONFIG_SECTION}_${name}} }\$*\""
	list_cb "$name" "$*"
}

config_load() {
	local s
	for s in $CONFIG_SECTIONS; do
		unset "CONFIG_${s}_TYPE"
	done
	CONFIG_SECTIONS= CONFIG_NUM_SECTIONS=0 CONFIG_SECTION=
	[ -f "$UCI_CONFIG_DIR/$1" ] || return 1
	. "$UCI_CONFIG_DIR/$1"
	${CONFIG_SECTION:+config_cb}
	return 0
}

# config_get VAR SECTION OPTION [DEFAULT]
config_get() {
	eval "$1=\${CONFIG_${2}_${3}:-\$4}"
}

# config_get_bool VAR SECTION OPTION [DEFAULT]
config_get_bool() {
	local v
	config_get v "$2" "$3" "$4"
	case "$v" in
	1 | on | true | yes | enabled) v=1 ;;
	0 | off | false | no | disabled) v=0 ;;
	*) v=$4 ;;
	esac
	eval "$1=\$v"
}
