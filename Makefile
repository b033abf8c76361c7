# zlayer-overlayd — build, run, test.
#
#   make run     build and run the daemon as root, state in ./.data
#   make test    vet + every test under the race detector (privileged suites run as root)
#
# See README.md.

GO        ?= go
BIN       := bin
DATA_DIR  ?= $(CURDIR)/.data
LOG_LEVEL ?= info
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/zlayer/zlayer-overlayd/internal/version.Version=$(VERSION)
RUN_ARGS  ?=

.PHONY: all build run test test-short vet fmt cross clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

run: build
	@if [ "$$(id -u)" != 0 ]; then echo "make run: zlayer-overlayd manages network devices and must run as root (sudo make run)"; exit 1; fi
	@echo "state in $(DATA_DIR); talk to it with: $(BIN)/overlayctl --data-dir $(DATA_DIR) status"
	$(BIN)/zlayer-overlayd --data-dir $(DATA_DIR) --log-level $(LOG_LEVEL) $(RUN_ARGS)

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

# Every test, race detector on. As root this includes the suites that build
# real namespaces, devices and tunnels; as another user they skip and say why.
test: vet
	$(GO) test -race -count=1 -timeout 60m ./...

test-short:
	$(GO) test -count=1 ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN)

# Benchmarks (issue 9; docs/benchmarks.md). As root, `make bench` installs
# the pinned peers and runs every side-by-side comparison; bench-ipc,
# bench-attach, bench-dns, bench-throughput and bench-scale run one each.
# Each interleaves ours and the peer for BENCH_ROUNDS rounds (at least 5)
# and prints medians, min/max and ratios. BENCH_FLAGS=-quick shortens every
# measurement for a smoke run.
.PHONY: bench bench-tools bench-ipc bench-attach bench-dns bench-throughput bench-scale bench-micro

BENCH_TOOLS  ?= /var/tmp/zlayer-bench/bin
BENCH_ROUNDS ?= 5
BENCH_FLAGS  ?=
ZLBENCH      = $(GO) run ./bench/cmd/zlbench -tools $(BENCH_TOOLS) -rounds $(BENCH_ROUNDS) $(BENCH_FLAGS)

bench: bench-tools
	$(ZLBENCH) all

bench-tools:
	BENCH_TOOLS=$(BENCH_TOOLS) bash bench/install.sh

bench-ipc: bench-tools
	$(ZLBENCH) ipc

bench-attach: bench-tools
	$(ZLBENCH) attach

bench-dns: bench-tools
	$(ZLBENCH) dns

bench-throughput: bench-tools
	$(ZLBENCH) throughput

bench-scale: bench-tools
	$(ZLBENCH) scale

# Go micro-benchmarks of the hot paths (codec, dispatch, IPAM, DNS zone
# lookup, peer upsert, metrics).
bench-micro:
	$(GO) test -run '^$$' -bench . -benchmem ./protocol ./internal/ipc ./internal/engine ./internal/ipam ./internal/dns ./internal/wg ./internal/metrics
