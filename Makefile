# Superpeer. `make run` starts the appliance; `make test` runs every test.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/superpeer/superpeer/superpeer.Version=$(VERSION)
BIN := bin/superpeer

.PHONY: all build run test bench cross lint fuzz sim demo firmware size clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/superpeer

run: build
	$(BIN) run

test:
	./scripts/test.sh

bench:
	./scripts/bench.sh

# linux amd64, arm64, arm v6/v7, mipsle and mips softfloat, stripped.
cross:
	./scripts/cross.sh dist

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	@if $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -version >/dev/null 2>&1; then \
		$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...; \
	else echo "staticcheck: not available from the module proxy, skipped"; fi

fuzz:
	./scripts/fuzz.sh

sim:
	$(GO) run ./overlay/sim/cmd/sim

clean:
	rm -rf bin dist
