#!/usr/bin/env bash
# `make test`: every test of the project. As root it first installs the
# Debian packages the lab tests drive, then runs them for real; as another
# user it runs what it can and lists what it skipped and why.
set -uo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}

status=0
step() { printf '\n== %s\n' "$*"; }

if [ "$(id -u)" = 0 ]; then
  step "test dependencies (Debian packages)"
  ./netlab/install-deps.sh || { echo "installing test dependencies failed"; exit 1; }
  # Labs of runs that were killed (a timeout, Ctrl-C) are removed first.
  go run ./netlab/cmd/netlab sweep || true
else
  echo "not root: the lab tests (network namespaces, kernel NATs) will be skipped; run 'make test' as root to run them"
fi

step "go vet"
go vet ./... || status=1

step "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; status=1
fi

step "go test ./..."
# -p 2: the machines have two cores; the lab tests' timing margins assume
# no more than that many test binaries at once.
go test -count=1 -p 2 -timeout 30m -json ./... | go run ./netlab/testreport || status=1

for extra in firmware/test-emulated.sh; do
  if [ -x "$extra" ]; then
    step "$extra"
    "./$extra" || status=1
  fi
done

if [ "$(id -u)" = 0 ]; then
  step "lab leftovers (namespaces of test processes that have ended)"
  if go run ./netlab/cmd/netlab leftovers; then echo "none"; else status=1; fi
fi

if [ $status -ne 0 ]; then
  printf '\nmake test: FAILED\n'
else
  printf '\nmake test: passed\n'
fi
exit $status
