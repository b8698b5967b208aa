#!/bin/sh
# Enforcement benchmark (internal/enforce/BENCHMARKS-section.md): 100,000 bans
# in one change vs shell loops of `nft add element` / `ipset add`, restore of
# 100,000 stored bans, purge of a 20,000-entry source vs `conntrack -D -s`.
# Runs as root, entirely in scratch network namespaces; prints one line per
# measurement and fails if a target is missed.
set -eu
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
out="${1:-}"
CTGUARD_BENCH=1 CTGUARD_BENCH_OUT="$out" go test -count=1 -run '^TestRootBenchEnforce$' -v ./internal/enforce
