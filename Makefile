# ctguard: build, test, benchmark, demo.
GO      ?= go
BIN     := bin/ctguard
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
DATE    ?= $(shell git log -1 --format=%cI 2>/dev/null)
# The version, commit and commit date that ctguard version reports (also
# when the Go toolchain records no VCS information, GOFLAGS=-buildvcs=false).
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)

.PHONY: build test test-unit lint fuzz bench-scan clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/ctguard

# The one test command (README and .ci/run): unit tests everywhere, plus the
# root-only integration tests, which skip without root and fail under CI=true;
# under CI (root, Debian) also the package check: build, lint, install,
# remove and purge the .deb.
test: lint
	$(GO) test -race -count=1 -timeout 20m ./...
	cd tools/mkdeb && $(GO) test -count=1 ./...
	@if [ "$$CI" = true ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  $(MAKE) --no-print-directory deb-check; \
	else echo "deb-check skipped: it installs and purges the package, so it runs under CI=true as root on Debian (or: sudo make deb-check)"; fi

test-unit:
	$(GO) test -count=1 -short ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) mod tidy -diff

# Short fuzz runs of every fuzz target in the module, found with go test
# -list (seed corpora are in the tests; failures land in testdata/fuzz).
FUZZTIME ?= 20s
fuzz:
	@set -e; for pkg in $$($(GO) list ./internal/... ./cmd/...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test $$pkg -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME); \
	  done; \
	done

clean:
	rm -rf bin build dist

# Man pages (section 8), one per command, generated from the command tree
# that prints the help: build/man/ctguard.8, ctguard-ban.8, ...
.PHONY: man
man: build
	rm -rf build/man
	$(BIN) gen-man build/man

# The reliability soak (root): the daemon for SOAK (default 30m) under a
# rotating attack with its store on a 1 MiB tmpfs, the chain policy flipped
# and the ruleset flushed at random, the store truncated across a restart.
# make test runs a 40 s version.
SOAK ?= 30m
.PHONY: soak
soak:
	CTGUARD_SOAK=$(SOAK) $(GO) test -count=1 -timeout 0 -v -run '^TestRootSoak$$' ./cmd/ctguard

# Full-table scan benchmark (root): fills a throw-away namespace with 262,144
# entries and times ctguard top against conntrack -L and the bare dump.
bench-scan: build
	$(GO) run ./tools/scanbench -ctguard $(BIN) -runs 7
	$(GO) test -run '^$$' -bench 'ParseAggregate|ParseRecorded|ParseProcLine' -benchmem ./internal/snapshot ./internal/conntrack

# Attack lab (test/e2e, as root): see README.md, "The attack lab".
LAB_BIN := bin/ctglab

.PHONY: lab-build demo lab lab-test lab-clean e2e

lab-build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(LAB_BIN) ./test/e2e/cmd/ctglab

# The incident's attack unprotected, under the cron-script method and under ctguard
# (defaults): summaries side by side, plot in out/demo/.
demo: build lab-build
	$(LAB_BIN) demo --out out/demo --ctguard $(BIN)

# Every scenario under every defense, full length; rewrites test/e2e/RESULTS.md.
lab: build lab-build
	$(LAB_BIN) results --out test/e2e/results --md test/e2e/RESULTS.md --ctguard $(BIN)

# Only the lab's e2e tests, short versions (as root; make test runs them
# with everything else).
e2e:
	$(GO) test -count=1 -timeout 30m ./test/e2e/...

# The e2e tests with full-length scenarios (CI runs the short ones in make test).
lab-test:
	CTGLAB_FULL=1 $(GO) test -count=1 -timeout 60m -v ./test/e2e/

# Remove namespaces left by lab runs that were killed.
lab-clean: lab-build
	$(LAB_BIN) cleanup

# Install the daemon as a systemd service (as root, after `make build`):
# binary, unit and, only if absent, the default config with every key
# commented out. DESTDIR stages into another root (packaging, tests);
# PREFIX moves the binary, and the unit is rewritten to match.
PREFIX  ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
CONFDIR ?= /etc/ctguard
UNITDIR ?= /etc/systemd/system
# systemctl only for the real root, and only where systemd runs.
SYSTEMD_LIVE = [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null

.PHONY: install uninstall

install:
	@test -x $(BIN) || { echo "$(BIN) is missing: run 'make build' first (as your user, not root)"; exit 1; }
	install -D -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/ctguard
	install -d -m 0755 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(CONFDIR)
	sed -e 's|/usr/local/sbin/ctguard|$(SBINDIR)/ctguard|g' -e 's|/etc/ctguard/ctguard.toml|$(CONFDIR)/ctguard.toml|g' \
	  packaging/ctguard.service > $(DESTDIR)$(UNITDIR)/.ctguard.service.tmp
	chmod 0644 $(DESTDIR)$(UNITDIR)/.ctguard.service.tmp
	mv -f $(DESTDIR)$(UNITDIR)/.ctguard.service.tmp $(DESTDIR)$(UNITDIR)/ctguard.service
	@if [ -e $(DESTDIR)$(CONFDIR)/ctguard.toml ]; then \
	  echo "keeping the existing $(DESTDIR)$(CONFDIR)/ctguard.toml (the shipped defaults are in packaging/ctguard.toml)"; \
	else \
	  echo "install -m 0644 packaging/ctguard.toml $(DESTDIR)$(CONFDIR)/ctguard.toml"; \
	  install -m 0644 packaging/ctguard.toml $(DESTDIR)$(CONFDIR)/ctguard.toml; \
	fi
	@if $(SYSTEMD_LIVE); then systemctl daemon-reload; fi
	@echo "installed; start with: systemctl enable --now ctguard (try 'ctguard run --dry-run --config $(CONFDIR)/ctguard.toml' first)"

# Stops and disables the service (real root only), removes the binary and
# the unit, and the config only if it is still the shipped one. Keeps the
# ban store (/var/lib/ctguard); bans in the kernel expire by themselves.
uninstall:
	@if $(SYSTEMD_LIVE); then systemctl disable --now ctguard.service 2>/dev/null || true; fi
	rm -f $(DESTDIR)$(SBINDIR)/ctguard $(DESTDIR)$(UNITDIR)/ctguard.service
	@if [ -e $(DESTDIR)$(CONFDIR)/ctguard.toml ]; then \
	  if cmp -s packaging/ctguard.toml $(DESTDIR)$(CONFDIR)/ctguard.toml; then \
	    echo "rm -f $(DESTDIR)$(CONFDIR)/ctguard.toml"; rm -f $(DESTDIR)$(CONFDIR)/ctguard.toml; \
	  else \
	    echo "keeping $(DESTDIR)$(CONFDIR)/ctguard.toml: it was changed"; \
	  fi; \
	fi
	@rmdir $(DESTDIR)$(CONFDIR) 2>/dev/null || true
	@if $(SYSTEMD_LIVE); then systemctl daemon-reload; fi
	@echo "uninstalled; kept the ban store /var/lib/ctguard. Bans still in the kernel expire by themselves; to lift them now: nft delete table inet ctguard"

# The Debian package: dist/ctguard_VERSION_ARCH.deb from bin/ctguard, the
# man pages in build/man (`make man`) and packaging/ (README.md, "Install
# from the Debian package"). tools/mkdeb is its own Go module, so nFPM never
# enters this module's go.mod; it runs for this machine (GOARCH cleared) and
# packages a binary of DEB_GOARCH. DEB_MANDIR and DEB_COMPLETIONS (a
# directory of ctguard.bash, _ctguard and ctguard.fish, for a binary that
# cannot run here) override where those come from.
DEB_GOARCH      ?= $(shell $(GO) env GOARCH)
DEB_MANDIR      ?= build/man
DEB_COMPLETIONS ?=

.PHONY: deb deb-check

deb: build $(if $(filter build/man,$(DEB_MANDIR)),man)
	cd tools/mkdeb && GOOS= GOARCH= GOARM= $(GO) run . -root ../.. -version '$(VERSION)' -arch '$(DEB_GOARCH)' \
	  -bin ../../$(BIN) -man '$(abspath $(DEB_MANDIR))' $(if $(DEB_COMPLETIONS),-completions '$(abspath $(DEB_COMPLETIONS))') -out ../../dist

# Builds the package, lints it, installs, checks, removes and purges it on
# this machine (as root; it refuses to run where ctguard is installed and
# never starts the service nor touches the firewall).
deb-check:
	scripts/deb-check.sh
