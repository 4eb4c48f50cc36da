# Sourced by the firmware scripts: the version stamped into the binaries and
# the version of the packages, both from git.
#
# VERSION is what `superpeer version` prints (git describe, as `make build`
# stamps it; an exported VERSION wins). PKG_VERSION is the same in a form
# dpkg and opkg order correctly: the last tag without its "v" (0.0.0 before
# the first tag), then "+git<date>.<commit>" when the tree is not exactly at
# that tag, and ".dirty" for uncommitted changes. SOURCE_DATE_EPOCH (the
# commit's time) makes the packages' timestamps reproducible.
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
if [ -z "${PKG_VERSION:-}" ]; then
  _tag=$(git describe --tags --abbrev=0 2>/dev/null || true)
  PKG_VERSION=${_tag#v}
  PKG_VERSION=${PKG_VERSION:-0.0.0}
  if [ -z "$_tag" ] || [ "$(git rev-list -n1 "$_tag" 2>/dev/null)" != "$(git rev-parse HEAD 2>/dev/null)" ]; then
    _commit=$(git rev-parse --short=7 HEAD 2>/dev/null || echo unknown)
    _date=$(git log -1 --format=%cd --date=format:%Y%m%d 2>/dev/null || date -u +%Y%m%d)
    PKG_VERSION="$PKG_VERSION+git$_date.$_commit"
  fi
  if ! git diff --quiet HEAD -- 2>/dev/null; then
    PKG_VERSION="$PKG_VERSION.dirty"
  fi
  unset _tag _commit _date
fi
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export VERSION PKG_VERSION SOURCE_DATE_EPOCH
