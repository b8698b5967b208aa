# ctguard: build, test, benchmark, demo.
GO      ?= go
BIN     := bin/ctguard
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: build test test-unit lint fuzz bench-scan clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/ctguard

# The one test command (README and .ci/run): unit tests everywhere, plus the
# root-only integration tests, which skip without root and fail under CI=true.
test: lint
	$(GO) test -race -count=1 -timeout 20m ./...

test-unit:
	$(GO) test -count=1 -short ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Short fuzz runs of every parser (the corpus lives in testdata/fuzz).
FUZZTIME ?= 20s
fuzz:
	$(GO) test ./internal/conntrack -run '^$$' -fuzz '^FuzzParseMessage$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/conntrack -run '^$$' -fuzz '^FuzzParseProcLine$$' -fuzztime $(FUZZTIME)

clean:
	rm -rf bin

# Full-table scan benchmark (root): fills a throw-away namespace with 262,144
# entries and times ctguard top against conntrack -L and the bare dump.
bench-scan: build
	$(GO) run ./tools/scanbench -ctguard $(BIN) -runs 7
	$(GO) test -run '^$$' -bench 'ParseAggregate|ParseRecorded|ParseProcLine' -benchmem ./internal/snapshot ./internal/conntrack

# Attack lab (test/e2e, as root): see test/e2e/README-section.md.
LAB_BIN := bin/ctglab

.PHONY: lab-build demo lab lab-test lab-clean

lab-build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(LAB_BIN) ./test/e2e/cmd/ctglab

# The brief's attack unprotected, then under the brief's method (and ctguard
# once `ctguard run` exists): summaries side by side, plot in out/demo/.
demo: build lab-build
	$(LAB_BIN) demo --out out/demo --ctguard $(BIN)

# Every scenario under every defense, full length; rewrites test/e2e/RESULTS.md.
lab: build lab-build
	$(LAB_BIN) results --out test/e2e/results --md test/e2e/RESULTS.md --ctguard $(BIN)

# The e2e tests with full-length scenarios (CI runs the short ones in make test).
lab-test:
	CTGLAB_FULL=1 $(GO) test -count=1 -timeout 60m -v ./test/e2e/

# Remove namespaces left by lab runs that were killed.
lab-clean: lab-build
	$(LAB_BIN) cleanup
