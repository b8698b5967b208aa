package main

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/testutil"
)

func readSysctl(t *testing.T, name string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/netfilter/" + name)
	if err != nil {
		t.Fatal(err)
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRootTuneNamespace runs the command as a user would, inside a fresh
// namespace: --observe scans over ctnetlink and sees the host's own
// outbound pool connection and an inbound client that comes back after a
// gap; --apply sets the per-namespace timeouts live and leaves the global
// ones to the files (temp --etc, empty --sysfs); --rollback restores them.
// The root namespace must not change.
func TestRootTuneNamespace(t *testing.T) {
	testutil.RequireRoot(t, "ip", "nft")
	const est = "nf_conntrack_tcp_timeout_established"
	rootBefore := map[string]int64{est: readSysctl(t, est), "nf_conntrack_max": readSysctl(t, "nf_conntrack_max")}

	victim, client := testutil.NewNS(t), testutil.NewNS(t)
	testutil.Veth(t, victim, "v0", "192.0.2.10/24", client, "c0", "192.0.2.20/24")
	victim.Script(t, `nft add table inet t
nft add chain inet t in '{type filter hook input priority 0;}'
nft add rule inet t in ct state established,related accept`)

	// A server in the client namespace stands for the database the
	// victim's pool connects to; a server on the victim for its :443.
	var db, web net.Listener
	client.Do(t, func() {
		var err error
		if db, err = net.Listen("tcp", "192.0.2.20:5432"); err != nil {
			t.Fatal(err)
		}
	})
	victim.Do(t, func() {
		var err error
		if web, err = net.Listen("tcp", "192.0.2.10:443"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { db.Close(); web.Close() })
	accepted := make(chan net.Conn, 4)
	for _, ln := range []net.Listener{db, web} {
		go func(ln net.Listener) {
			for i := 0; i < 2; i++ {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				accepted <- c
			}
		}(ln)
	}
	var pool, browser net.Conn
	victim.Do(t, func() {
		var err error
		if pool, err = net.DialTimeout("tcp", "192.0.2.20:5432", 5*time.Second); err != nil {
			t.Fatal(err)
		}
	})
	client.Do(t, func() {
		var err error
		if browser, err = net.DialTimeout("tcp", "192.0.2.10:443", 5*time.Second); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { pool.Close(); browser.Close() })
	for i := 0; i < 2; i++ {
		select {
		case c := <-accepted:
			t.Cleanup(func() { c.Close() })
		case <-time.After(5 * time.Second):
			t.Fatal("accept timed out")
		}
	}
	// The browser comes back 3 s into the observation: a completed gap.
	go func() {
		time.Sleep(3 * time.Second)
		browser.Write([]byte("x"))
	}()

	etc, sysfs := t.TempDir(), t.TempDir()
	roots := []string{"--procfs", "/proc", "--sysfs", sysfs, "--etc", etc}
	victim.Do(t, func() {
		nsBefore := readSysctl(t, est)
		out, errOut, code := runCLI(t, append([]string{"tune", "--observe", "6s"}, roots...)...)
		if code != 0 {
			t.Fatalf("tune --observe: exit %d: %s", code, errOut)
		}
		obsLine := ""
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "observed:") {
				obsLine = l
			}
		}
		t.Logf("%s", obsLine)
		for _, want := range []string{"observed: 2 scan(s)", "inbound n=1 ", "outbound n=1 ", "1 completed gaps"} {
			if !strings.Contains(obsLine, want) {
				t.Errorf("observation lacks %q: %s", want, obsLine)
			}
		}

		out, errOut, code = runCLI(t, append([]string{"tune", "--apply", "--yes"}, roots...)...)
		if code != 0 {
			t.Fatalf("tune --apply: exit %d: %s\n%s", code, errOut, out)
		}
		if !strings.Contains(out, "not live (files only): net.netfilter.nf_conntrack_max") {
			t.Errorf("max not reported as files-only:\n%s", out)
		}
		if strings.Contains(out, "live /proc/sys/net/netfilter/nf_conntrack_max") || strings.Contains(out, "live /sys/") {
			t.Errorf("a global value was to be written live:\n%s", out)
		}
		if got := readSysctl(t, est); got != 8400 || got == nsBefore {
			t.Errorf("namespace established %d after apply (was %d), want 8400", got, nsBefore)
		}
		if _, err := os.Stat(filepath.Join(etc, "sysctl.d", "90-ctguard-conntrack.conf")); err != nil {
			t.Error(err)
		}
		out, errOut, code = runCLI(t, append([]string{"tune", "--rollback", "--yes"}, roots...)...)
		if code != 0 {
			t.Fatalf("tune --rollback: exit %d: %s\n%s", code, errOut, out)
		}
		if got := readSysctl(t, est); got != nsBefore {
			t.Errorf("namespace established %d after rollback, want %d", got, nsBefore)
		}
	})
	for k, v := range rootBefore {
		if got := readSysctl(t, k); got != v {
			t.Errorf("root namespace %s changed: %d -> %d", k, v, got)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(etc, "sysctl.d")); len(ents) != 0 {
		t.Errorf("files left in the temp etc after rollback: %v", ents)
	}
}

// TestRootTuneKubeProxyRefusal: in a namespace whose firewall has
// kube-proxy's nftables table (a masquerade rule in table ip kube-proxy),
// tune reads the live rules, leaves the established timeout to kube-proxy
// (not applied, its setting named instead) and still applies the other
// per-namespace timeouts; --rollback restores them. The root namespace must
// not change.
func TestRootTuneKubeProxyRefusal(t *testing.T) {
	testutil.RequireRoot(t, "ip", "nft")
	const est, synRecv = "nf_conntrack_tcp_timeout_established", "nf_conntrack_tcp_timeout_syn_recv"
	rootBefore := map[string]int64{est: readSysctl(t, est), synRecv: readSysctl(t, synRecv), "nf_conntrack_max": readSysctl(t, "nf_conntrack_max")}

	victim := testutil.NewNS(t)
	victim.Script(t, `nft add table ip kube-proxy
nft add chain ip kube-proxy nat-postrouting '{type nat hook postrouting priority srcnat;}'
nft add rule ip kube-proxy nat-postrouting masquerade`)
	etc, sysfs := t.TempDir(), t.TempDir()
	roots := []string{"--procfs", "/proc", "--sysfs", sysfs, "--etc", etc}
	victim.Do(t, func() {
		estBefore, synBefore := readSysctl(t, est), readSysctl(t, synRecv)
		if synBefore <= 30 {
			t.Skipf("syn_recv already %d s here: nothing else to apply", synBefore)
		}
		out, errOut, code := runCLI(t, append([]string{"tune", "--apply", "--yes"}, roots...)...)
		if code != 0 {
			t.Fatalf("tune --apply: exit %d: %s\n%s", code, errOut, out)
		}
		for _, want := range []string{"nft list ruleset: table ip kube-proxy",
			"not applied: net.netfilter.nf_conntrack_tcp_timeout_established = ",
			"(flag --conntrack-tcp-timeout-established=", "established timeout floor 8400 s"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q", want)
			}
		}
		if got := readSysctl(t, est); got != estBefore {
			t.Errorf("established %d -> %d: kube-proxy's value was changed", estBefore, got)
		}
		if got := readSysctl(t, synRecv); got != 30 {
			t.Errorf("syn_recv %d, want 30 (the rest is applied)", got)
		}
		if sys, _ := os.ReadFile(filepath.Join(etc, "sysctl.d", "90-ctguard-conntrack.conf")); strings.Contains(string(sys), est) || strings.Contains(string(sys), "nf_conntrack_max") {
			t.Errorf("owned keys in ctguard's file:\n%s", sys)
		}
		if _, errOut, code := runCLI(t, append([]string{"tune", "--rollback", "--yes"}, roots...)...); code != 0 {
			t.Fatalf("tune --rollback: exit %d: %s", code, errOut)
		}
		if got := readSysctl(t, synRecv); got != synBefore {
			t.Errorf("syn_recv %d after rollback, want %d", got, synBefore)
		}
	})
	for k, v := range rootBefore {
		if got := readSysctl(t, k); got != v {
			t.Errorf("root namespace %s changed: %d -> %d", k, v, got)
		}
	}
}
