#!/usr/bin/env bash
# bench/section.sh "## Heading" < section.md
# Replaces the section that starts with the heading line in
# docs/BENCHMARKS.md (up to the next "## " heading) with standard input, or
# appends it. The section on standard input must start with the heading.
set -euo pipefail
cd "$(dirname "$0")/.."
heading=$1
file=docs/BENCHMARKS.md
[ -f "$file" ] || printf '# Benchmarks\n\nEvery figure here comes from `make bench` on the machine named in its section, as a ratio against a baseline measured in the same run.\n' > "$file"
new=$(cat)
tmp=$(mktemp)
exec 9>/tmp/superpeer-benchmarks.lock
flock 9
awk -v h="$heading" -v new="$new" '
  BEGIN { done = 0; skip = 0 }
  $0 == h { print new; print ""; done = 1; skip = 1; next }
  skip && /^## / { skip = 0 }
  !skip { print }
  END { if (!done) { print ""; print new } }
' "$file" > "$tmp"
mv "$tmp" "$file"
