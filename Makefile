# Superpeer. `make run` starts the appliance; `make test` runs every test.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/superpeer/superpeer/superpeer.Version=$(VERSION)
BIN := bin/superpeer
FUZZTIME ?= 20s

.PHONY: all build run test bench cross lint fuzz sim lab clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/superpeer

# The appliance on its embedded default configuration; Ctrl-C stops it.
run: build
	$(BIN) run

# Every test. As root: installs the Debian packages the lab needs and runs
# the lab tests for real; otherwise lists what it skipped and why.
test:
	./netlab/test.sh

bench:
	./bench/run.sh

# linux amd64, arm64, arm v6/v7, mipsle and mips softfloat, stripped.
cross:
	./firmware/cross.sh dist

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	@if $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -version >/dev/null 2>&1; then \
		$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...; \
	else echo "staticcheck: not available from the module proxy, skipped"; fi

# Every Fuzz function of every package, FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "== $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

# The overlay's discrete-event simulator at 1,000 / 10,000 / 100,000 nodes.
sim:
	$(GO) run ./overlay/sim/cmd/sim

# A lab topology by hand: make lab SITES=pp,random+upnp
SITES ?= pp,random
lab:
	$(GO) run ./netlab/cmd/netlab up --sites $(SITES)

clean:
	rm -rf bin dist

.PHONY: firmware size

# Release binaries for every board (firmware/cross.sh), the OpenWrt .ipk and
# Debian .deb packages (nfpm), and the size report, all into dist/.
firmware:
	./firmware/build.sh dist

# The flash budget, run by CI: fails when the mipsle binary exceeds 12 MB or
# its .ipk 4 MB (SIZE_MAX_BINARY=, SIZE_MAX_IPK= set other limits; DIST= the
# directory, dist by default).
size:
	./firmware/size.sh $(or $(DIST),dist)

.PHONY: demo

# A call between two home sites, explained (as root): the two-site lab,
# a superpeer daemon per site, a phone at each, one call; prints what
# happened and tears everything down (also on Ctrl-C). Not part of `make test`.
demo: build
	$(GO) run ./netlab/demo --bin $(BIN)
