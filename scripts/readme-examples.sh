#!/usr/bin/env bash
# Regenerates the example outputs in README.md ("Reading the table") from a
# real run: a scratch network namespace whose table holds entries like the
# incident's, injected with conntrack -I (there is no socket behind them, so
# they count as orphans, as a silent bot's entries do once the server has
# given up its side). Nothing outside the namespace is touched; it is
# deleted at the end. Run as root from the repository: scripts/readme-examples.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/ctguard}
[ "$(id -u)" = 0 ] || { echo "readme-examples: needs root (network namespaces, conntrack)" >&2; exit 1; }
for t in ip conntrack; do command -v $t >/dev/null || { echo "readme-examples: needs $t" >&2; exit 1; }; done
[ -x "$BIN" ] || make build >/dev/null

ns=ctguard-readme-$$
state=$(mktemp -d)
grower=
cleanup() {
	[ -n "$grower" ] && kill "$grower" 2>/dev/null || true
	ip netns del "$ns" 2>/dev/null || true
	rm -rf "$state"
}
trap cleanup EXIT
ip netns add "$ns"
inns() { ip netns exec "$ns" "$@"; }
inns ip link set lo up
inns ip link add v0 type veth peer name v1
inns ip addr add 192.0.2.1/24 dev v0
inns ip link set v0 up
inns ip link set v1 up

# inject SRC COUNT IDLE_SECONDS: COUNT idle ESTABLISHED entries from SRC to
# 192.0.2.1:443 (the established timeout is 5 days; idle = 5 days - left).
inject() {
	local src=$1 n=$2 idle=$3 i
	for ((i = 0; i < n; i++)); do
		inns conntrack -I -s "$src" -d 192.0.2.1 -p tcp --sport $((30000 + i)) --dport 443 \
			--state ESTABLISHED -t $((432000 - idle)) -u ASSURED,SEEN_REPLY >/dev/null 2>&1
	done
}
inject 203.0.113.110 120 4020
inject 203.0.113.111 70 3600
inject 198.51.100.204 40 2509
inject 198.51.100.205 20 1768
inject 203.0.113.112 3 28
inject 203.0.113.113 3 5
# A bounded grower while status samples: one entry every 1.6 s, 10 at most.
(
	for ((i = 0; i < 10; i++)); do
		inns conntrack -I -s 203.0.113.$((120 + i)) -d 192.0.2.1 -p tcp --sport 40000 --dport 443 \
			--state ESTABLISHED -t 432000 -u ASSURED,SEEN_REPLY >/dev/null 2>&1
		sleep 1.6
	done
) &
grower=$!

export CTGUARD_SOCKET=$state/none.sock CTGUARD_STATE_DIR=$state/store
show() {
	echo "\$ sudo ctguard $*"
	inns "$BIN" "$@" 2>&1
	echo
}
show status
show top -n 6
show why 203.0.113.110
show why 198.51.100.205
