# zlayer-overlayd — build, run, test.
#
#   make run     build and run the daemon as root, state in ./.data
#   make test    vet, the Windows/macOS cross builds, every test under the race detector
#                (privileged suites run as root; our wireguard-go fork's own tests too),
#                fuzz seed corpora, the chaos suites short
#   make soak    the chaos suites long, then every fuzz target for FUZZTIME each
#   make test-vm every privileged suite in QEMU guests booting Debian's stock
#                kernels (kernel WireGuard); `make test` runs the kernel
#                WireGuard part on Debian 12's kernel
#   make cross   build and vet every package for Windows and macOS
#
# See README.md.

GO        ?= go
BIN       := bin
DATA_DIR  ?= $(CURDIR)/.data
LOG_LEVEL ?= info
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/zlayer/zlayer-overlayd/internal/version.Version=$(VERSION)
RUN_ARGS  ?=

# Sizes of the chaos suites (internal/chaos): crash-consistency operations
# and SIGKILLs, and requests per client of the 64-client load suites.
CHAOS_TEST ?= -chaos.ops=150 -chaos.kills=5 -chaos.requests=200
CHAOS_SOAK ?= -chaos.ops=1000 -chaos.kills=20 -chaos.requests=1000
FUZZTIME   ?= 2m

.PHONY: all build run demo test test-short test-vm vm-tools soak vet fmt cross clean wireguard-fork

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

run: build
	@if [ "$$(id -u)" != 0 ]; then echo "make run: zlayer-overlayd manages network devices and must run as root (sudo make run)"; exit 1; fi
	@echo "state in $(DATA_DIR); talk to it with: $(BIN)/overlayctl --data-dir $(DATA_DIR) status"
	$(BIN)/zlayer-overlayd --data-dir $(DATA_DIR) --log-level $(LOG_LEVEL) $(RUN_ARGS)

# Two nodes, a mesh, a service with a container on each node, pings across;
# everything is removed at the end. Root.
demo: build
	@if [ "$$(id -u)" != 0 ]; then echo "make demo: needs root (network namespaces)"; exit 1; fi
	$(GO) run ./internal/lab/demo --daemon $(BIN)/zlayer-overlayd

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

# The Windows and macOS builds. Their code cannot run on our machines, so
# the bar is that every package builds for each of these and vets clean;
# the OS-independent logic behind them is tested on Linux by `test`.
CROSS_BUILD ?= windows/amd64 windows/arm64 darwin/amd64 darwin/arm64
CROSS_VET   ?= windows/amd64 darwin/arm64

cross:
	@set -e; for p in $(CROSS_BUILD); do \
		echo "go build ./... for $$p"; \
		GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build ./...; \
	done; \
	for p in $(CROSS_VET); do \
		echo "go vet ./... for $$p"; \
		GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) vet ./...; \
	done

# Every test, race detector on. As root this includes the suites that build
# real namespaces, devices and tunnels, and (last, alone: it emulates a
# 2-CPU machine) the kernel WireGuard suites in a VM on Debian 12's kernel;
# as another user they skip and say why.
test: vet cross wireguard-fork
	$(GO) test -race -count=1 -timeout 60m $$($(GO) list ./... | grep -v -e '/internal/chaos$$' -e '/internal/lab/vm$$')
	$(GO) test -race -count=1 -timeout 30m ./internal/chaos $(CHAOS_TEST)
	$(GO) test -race -count=1 -timeout 60m ./internal/lab/vm

# Our fork of wireguard-go (third_party/README.md): the tree must be
# upstream at go.mod's version plus its patches, and its own tests pass.
wireguard-fork:
	GO=$(GO) bash third_party/sync-wireguard.sh --check
	cd third_party/wireguard && $(GO) test -race -count=1 ./...

# Every privileged suite in QEMU guests booting Debian 12's kernel and the
# newest bookworm-backports kernel (docs/operations.md, "Tested kernels").
# As root; installs the Debian packages it needs first. VM_FLAGS narrows it,
# e.g. VM_FLAGS='-vm.kernels=^bookworm$$ -vm.suites=^e2e'.
VM_FLAGS ?=

test-vm: vm-tools
	$(GO) test -count=1 -v -timeout 300m -run '^TestVM$$' ./internal/lab/vm -vm.all $(VM_FLAGS)

vm-tools:
	@if [ "$$(id -u)" != 0 ]; then echo "make test-vm: needs root (apt-get, and the guest runs the privileged suites): sudo make test-vm"; exit 1; fi
	bash internal/lab/vm/install.sh

# The long version: a 1,000-operation crash workload with 20 SIGKILLs and
# the full 64 × 1,000 load, under the race detector; then every fuzz target
# of every package (found with go test -list) for FUZZTIME. As root.
soak: vet
	$(GO) test -race -count=1 -timeout 3h -v -run 'TestCrashConsistency|TestLoad' ./internal/chaos $(CHAOS_SOAK)
	@for pkg in $$($(GO) list ./...); do \
		for fn in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$fn for $(FUZZTIME)"; \
			$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

test-short:
	$(GO) test -count=1 ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN)

# Benchmarks (issue 9; docs/benchmarks.md). As root, `make bench` installs
# the pinned peers and runs every side-by-side comparison; bench-ipc,
# bench-attach, bench-dns, bench-throughput, bench-scale and bench-cni run
# one each. bench-wg-variants measures our wireguard-go fork's patches,
# dropped candidates and changed constants against upstream wireguard-go
# (VARIANTS= picks some; PROFILE=1 adds a whole-machine perf profile);
# bench-crypto compares the ChaCha20-Poly1305 in our data path (x/crypto)
# with OpenSSL's at the overlay's packet size.
# Each interleaves ours and the peer for BENCH_ROUNDS rounds (at least 5)
# and prints medians, min/max and ratios. BENCH_FLAGS=-quick shortens every
# measurement for a smoke run.
.PHONY: bench bench-tools bench-ipc bench-attach bench-dns bench-throughput bench-scale bench-cni bench-micro bench-wg-variants bench-crypto

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

bench-cni: bench-tools
	$(ZLBENCH) cni

bench-wg-variants: bench-tools
	GO=$(GO) VARIANTS="$(VARIANTS)" bash bench/wg-variants.sh $(BENCH_ROUNDS)

# 1350 bytes is x/crypto's own size nearest the overlay's 1420-byte MTU;
# -aead makes OpenSSL seal whole messages (key, nonce, tag) as we do.
bench-crypto: bench-tools
	$(GO) test -run '^$$' -bench 'Chacha20Poly1305/(Seal|Open)-(1350|8192)$$' -count $(BENCH_ROUNDS) golang.org/x/crypto/chacha20poly1305
	@echo "Poly1305 alone (x/crypto's scalar MAC; the AEAD above runs it beside its AVX2 ChaCha20):"
	$(GO) test -run '^$$' -bench '^Benchmark(1K|2M)$$' -count $(BENCH_ROUNDS) golang.org/x/crypto/internal/poly1305
	for n in 1350 8192; do \
		printf 'openssl seal %5s B, 1000s of bytes/s: ' $$n; \
		openssl speed -aead -evp chacha20-poly1305 -bytes $$n -seconds 3 2>/dev/null | tail -1; \
		printf 'openssl open %5s B, 1000s of bytes/s: ' $$n; \
		openssl speed -aead -decrypt -evp chacha20-poly1305 -bytes $$n -seconds 3 2>/dev/null | tail -1; \
	done
	@echo "OpenSSL's seal through EVP and through its internal primitives (static libcrypto.a):"
	cc -O2 -o $(BENCH_TOOLS)/openssl-seal bench/openssl-seal/seal.c "$$(cc -print-file-name=libcrypto.a)" -lpthread -ldl
	$(BENCH_TOOLS)/openssl-seal 1350 8192

# Go micro-benchmarks of the hot paths (codec, dispatch, IPAM, DNS zone
# lookup, peer upsert, metrics).
bench-micro:
	$(GO) test -run '^$$' -bench . -benchmem ./protocol ./internal/ipc ./internal/engine ./internal/ipam ./internal/dns ./internal/wg ./internal/metrics
