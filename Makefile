# zlayer-overlayd — build, run, test.
#
#   make run     build and run the daemon as root, state in ./.data
#   make test    vet + every test under the race detector (privileged suites run as root),
#                fuzz seed corpora, and the chaos suites at a short size
#   make soak    the chaos suites long, then every fuzz target for FUZZTIME each
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

.PHONY: all build run test test-short soak vet fmt cross clean

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
	$(GO) test -race -count=1 -timeout 60m $$($(GO) list ./... | grep -v '/internal/chaos$$')
	$(GO) test -race -count=1 -timeout 30m ./internal/chaos $(CHAOS_TEST)

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
