#!/usr/bin/env bash
# Checks the Debian package end to end on this machine, as root (make
# deb-check): builds it (make deb), runs lintian (fails on errors), installs
# it with apt-get, runs the installed ctguard (version, config check), finds
# its man page and completions, removes it (the ban store must stay), purges
# it (the store must go), and prints the package's size and install time.
#
# It never starts the service: the package does not start it on install,
# and while this script runs a policy-rc.d that refuses every start is in
# place (the one already there if it refuses, otherwise ours, with the
# previous state restored at exit). It never touches the firewall: it runs
# no `ctguard run` and nothing that bans. It refuses to run where ctguard
# is already installed (package, make install, or a ban store), since it
# purges what it installs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

say() { printf '== %s\n' "$*"; }
fail() { printf 'deb-check: FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || { echo "deb-check: needs root (it installs and purges the package): sudo $0" >&2; exit 2; }
for tool in apt-get dpkg dpkg-deb; do
	command -v "$tool" >/dev/null || { echo "deb-check: needs $tool (a Debian or Ubuntu machine)" >&2; exit 2; }
done

# This machine must not have ctguard already: the check purges what it
# installs, and would take an operator's config or ban store with it.
if dpkg-query -W -f='${db:Status-Status}' ctguard 2>/dev/null | grep -qv '^not-installed$'; then
	fail "the ctguard package is installed here (dpkg -s ctguard); run this check on a machine without it"
fi
for p in /usr/sbin/ctguard /usr/local/sbin/ctguard /etc/ctguard /var/lib/ctguard /lib/systemd/system/ctguard.service /etc/systemd/system/ctguard.service; do
	[ ! -e "$p" ] || fail "$p exists (ctguard installed by hand?); run this check on a machine without ctguard"
done

APT_LOCK=(-o DPkg::Lock::Timeout=300)
POLICY=/usr/sbin/policy-rc.d
policy_backup=""
made_policy=0
installed=0

cleanup() {
	local rc=$?
	if [ "$installed" = 1 ] && dpkg-query -W -f='${db:Status-Status}' ctguard 2>/dev/null | grep -qv '^not-installed$'; then
		echo "deb-check: purging the package left installed by the failed check" >&2
		apt-get purge -y -qq "${APT_LOCK[@]}" ctguard >/dev/null 2>&1 || true
		rm -rf /var/lib/ctguard
	fi
	if [ "$made_policy" = 1 ]; then
		rm -f "$POLICY"
		if [ -n "$policy_backup" ]; then
			mv -f "$policy_backup" "$POLICY"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A policy that refuses to start ctguard (and anything else a package
# installed here would start). Keep the machine's own if it already does.
policy_refuses() { [ -x "$POLICY" ] && { "$POLICY" ctguard.service start >/dev/null 2>&1; [ $? = 101 ]; }; }
if policy_refuses; then
	say "$POLICY already refuses service starts: kept"
else
	if [ -e "$POLICY" ] || [ -L "$POLICY" ]; then
		policy_backup=$(mktemp "$POLICY.deb-check.XXXXXX")
		mv -f "$POLICY" "$policy_backup"
	fi
	made_policy=1
	printf '#!/bin/sh\n# deb-check.sh: no service starts while it runs\nexit 101\n' > "$POLICY"
	chmod 0755 "$POLICY"
	say "installed a $POLICY refusing service starts (the previous state is restored at exit)"
fi
policy_refuses || fail "$POLICY does not refuse starts"

say "make deb"
make deb
deb=$(ls -t dist/ctguard_*.deb | head -n1)
[ -f "$deb" ] || fail "make deb left no dist/ctguard_*.deb"
say "built $deb"

say "lintian"
if ! command -v lintian >/dev/null; then
	apt-get install -y -qq --no-install-recommends "${APT_LOCK[@]}" lintian >/dev/null ||
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends "${APT_LOCK[@]}" lintian >/dev/null; }
fi
# (Not --show-overrides: with it, lintian 2.116 fails on overridden errors.)
lint_out=$(lintian --fail-on error --info "$deb" 2>&1) || { printf '%s\n' "$lint_out"; fail "lintian reports errors"; }
printf '%s\n' "$lint_out" | grep -v 'running with root privileges' || true
overrides=$(grep -c '^ctguard: ' packaging/debian/lintian-overrides || true)
lint_counts=$(printf '%s\n' "$lint_out" | awk -v o="$overrides" '/^[EWIPX]: /{n[$1]++} END{printf "E %d, W %d, I %d, %d overridden", n["E:"], n["W:"], n["I:"], o}')
say "lintian: $lint_counts (packaging/debian/lintian-overrides)"

say "apt-get install -y ./$deb"
installed=1
t0=$(date +%s%N)
apt-get install -y "${APT_LOCK[@]}" "./$deb"
t1=$(date +%s%N)
install_ms=$(( (t1 - t0) / 1000000 ))

dpkg-query -W -f='${db:Status-Abbrev}' ctguard | grep -q '^ii' || fail "ctguard is not installed after apt-get install"
[ "$(command -v ctguard)" = /usr/sbin/ctguard ] || fail "ctguard is not /usr/sbin/ctguard on PATH: $(command -v ctguard || echo none)"
say "ctguard version"
ctguard version
say "man -w ctguard"
man -w ctguard
for f in /usr/share/bash-completion/completions/ctguard /usr/share/zsh/vendor-completions/_ctguard /usr/share/fish/vendor_completions.d/ctguard.fish; do
	[ -s "$f" ] || fail "$f is missing or empty"
done
bash -n /usr/share/bash-completion/completions/ctguard || fail "the bash completion does not parse"
say "bash, zsh and fish completions installed"
say "ctguard config check /etc/ctguard/ctguard.toml"
ctguard config check /etc/ctguard/ctguard.toml
grep -q '^ExecStart=/usr/sbin/ctguard run ' /lib/systemd/system/ctguard.service || fail "the unit does not run /usr/sbin/ctguard"
grep -qx /etc/ctguard/ctguard.toml /var/lib/dpkg/info/ctguard.conffiles || fail "/etc/ctguard/ctguard.toml is not a conffile"
# Installed, not enabled (README.md: the operator opts in).
if ls /etc/systemd/system/*.wants/ctguard.service >/dev/null 2>&1; then
	fail "the package enabled ctguard.service"
fi
say "unit at /lib/systemd/system/ctguard.service, not enabled, not started"

# The ban store as a daemon that ran would have left it.
mkdir -p -m 0700 /var/lib/ctguard
echo "deb-check marker" > /var/lib/ctguard/deb-check.marker

say "apt-get remove -y ctguard"
apt-get remove -y "${APT_LOCK[@]}" ctguard
[ ! -e /usr/sbin/ctguard ] || fail "/usr/sbin/ctguard is still there after remove"
[ -f /var/lib/ctguard/deb-check.marker ] || fail "remove deleted the ban store /var/lib/ctguard"
[ -f /etc/ctguard/ctguard.toml ] || fail "remove deleted the conffile /etc/ctguard/ctguard.toml"
say "removed: /usr/sbin/ctguard gone; /var/lib/ctguard and /etc/ctguard/ctguard.toml kept"

say "apt-get purge -y ctguard"
apt-get purge -y "${APT_LOCK[@]}" ctguard
[ ! -e /var/lib/ctguard ] || fail "purge left /var/lib/ctguard"
[ ! -e /etc/ctguard ] || fail "purge left /etc/ctguard"
if dpkg-query -W -f='${db:Status-Status}' ctguard 2>/dev/null | grep -qv '^not-installed$'; then
	fail "dpkg still knows ctguard after purge"
fi
for p in /etc/systemd/system/ctguard.service /var/lib/systemd/deb-systemd-helper-enabled/ctguard.service.dsh-also /var/lib/systemd/deb-systemd-helper-masked/ctguard.service; do
	[ ! -e "$p" ] && [ ! -L "$p" ] || fail "purge left $p"
done
installed=0
say "purged: /var/lib/ctguard, /etc/ctguard and the unit's mask and state gone"

size=$(stat -c %s "$deb")
inst_kib=$(dpkg-deb -f "$deb" Installed-Size)
printf 'deb-check: OK: %s: package %s bytes (%.1f MiB), installed %s KiB, apt-get install %d ms; lintian %s\n' \
	"$deb" "$size" "$(echo "$size" | awk '{print $1/1048576}')" "$inst_kib" "$install_ms" "$lint_counts"
