#!/usr/bin/env bash
# NAT binding-lifetime measurement in the netlab: measurement time against
# the physical limit (the lifetime itself) and the estimate's error, for
# several conntrack timeouts. Needs root (network namespaces). Writes the
# "## NAT lifetime measurement" section of docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
	echo "nat-lifetime: needs root for the netlab, skipped" >&2
	exit 0
fi
section=$(mktemp)
trap 'rm -f "$section"' EXIT
SUPERPEER_BENCH_LIFETIME="$section" go test -count=1 -timeout 30m \
	-run '^TestBenchLifetimeLab$' ./nat/probe/ >&2
cat "$section"
if [ -x scripts/bench-section.sh ]; then
	scripts/bench-section.sh "## NAT lifetime measurement" < "$section"
else
	# Replace our section (from its heading to the next "## " heading) or
	# append it; nothing else in the file is touched.
	doc=docs/BENCHMARKS.md
	[ -f "$doc" ] || printf '# Benchmarks\n' > "$doc"
	awk -v sec="$section" '
		BEGIN { while ((getline l < sec) > 0) body = body l "\n" }
		/^## NAT lifetime measurement$/ { skip = 1; if (!done) { printf "%s", body; done = 1 }; next }
		skip && /^## / { skip = 0; print ""; }
		!skip { print }
		END { if (!done) printf "\n%s", body }
	' "$doc" > "$doc.tmp" && mv "$doc.tmp" "$doc"
fi
