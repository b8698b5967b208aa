package tune

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/host"
	"github.com/ctguard/ctguard/internal/testutil"
)

const statefulRules = `nft add table inet t
nft add chain inet t in '{type filter hook input priority 0;}'
nft add rule inet t in ct state established,related accept
nft add chain inet t out '{type filter hook output priority 0;}'
nft add rule inet t out ct state new,established accept`

func readLive(t *testing.T, name string) int64 {
	t.Helper()
	v, err := host.ReadInt(filepath.Join("/proc/sys/net/netfilter", name))
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return v
}

// TestRootApplyRollbackNamespace applies and rolls back the per-namespace
// timeouts live in a fresh network namespace, with a temp --etc and an empty
// --sysfs, and checks that the root namespace and a second fresh namespace
// keep their values. Global keys (max, buckets, hashsize) are dropped from
// the plan: they are tested through fixtures only.
func TestRootApplyRollbackNamespace(t *testing.T) {
	testutil.RequireRoot(t, "ip", "nft")
	names := []string{Established, SynRecv, TimeWait, Max}
	rootBefore := map[string]int64{}
	for _, n := range names {
		rootBefore[n] = readLive(t, n)
	}

	ns := testutil.NewNS(t)
	ns.Script(t, statefulRules)
	other := testutil.NewNS(t)
	other.Script(t, statefulRules)

	etc, sysfs := t.TempDir(), t.TempDir()
	roots := Roots{Procfs: "/proc", Sysfs: sysfs, Etc: etc}
	var nsBefore map[string]int64
	var conn net.Conn
	var plan Plan
	ns.Do(t, func() {
		// Conntrack must really be tracking here: a loopback TCP flow has to
		// show up as an ESTABLISHED entry.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				accepted <- c
			}
		}()
		conn, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		var server net.Conn
		select {
		case server = <-accepted:
			t.Cleanup(func() { server.Close() })
		case <-time.After(5 * time.Second):
			t.Fatal("accept timed out")
		}
		port := uint16(ln.Addr().(*net.TCPAddr).Port)

		h, err := ReadHost(roots)
		if err != nil {
			t.Fatal(err)
		}
		if h.BucketsWritable || h.MaxWritable {
			t.Fatalf("global sysctls writable inside a namespace: max %v buckets %v", h.MaxWritable, h.BucketsWritable)
		}
		nsBefore = map[string]int64{}
		for _, n := range names {
			nsBefore[n] = h.Sysctl[n]
		}
		obs := scanNS(t, h, port)
		if obs.Outbound.N < 1 {
			t.Fatalf("no ESTABLISHED loopback entry seen: %+v", obs)
		}

		// The whole plan: global items must come out as files only.
		plan = Recommend(h, obs, Budget{})
		c, err := Prepare(roots, plan)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range c.Live {
			if !strings.HasPrefix(l.Path, "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_") && !strings.HasPrefix(l.Path, "/proc/sys/net/netfilter/nf_conntrack_udp_timeout") {
				t.Fatalf("refusing to run: plan writes %s", l.Path)
			}
		}
		if len(c.NotLive) != 2 {
			t.Errorf("not live: %q, want max and hashsize", c.NotLive)
		}
		done, err := Apply(roots, c, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range done.Live {
			if l.Err != "" {
				t.Errorf("live %s not applied: %s", l.Key, l.Err)
			}
		}
		est, _ := plan.Item(Established)
		if got := readLive(t, Established); got != est.Recommended || got == nsBefore[Established] {
			t.Errorf("namespace established %d after apply, want %d (was %d)", got, est.Recommended, nsBefore[Established])
		}
		if got := readLive(t, SynRecv); got != 30 {
			t.Errorf("namespace syn_recv %d", got)
		}
		t.Logf("namespace before %v; after apply established=%d syn_recv=%d time_wait=%d; %d ESTABLISHED seen, outbound idle max %.0f s",
			nsBefore, readLive(t, Established), readLive(t, SynRecv), readLive(t, TimeWait), obs.Outbound.N, obs.OutboundMax)
		// The new value reaches the entry with its next packet.
		if _, err := conn.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1)
		server.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(server, buf); err != nil {
			t.Fatal(err)
		}
		rem := remaining(t, port)
		t.Logf("test flow's remaining timeout after one packet: %d s", rem)
		if rem > uint32(est.Recommended) || rem < uint32(est.Recommended)-10 {
			t.Errorf("entry remaining %d s after a packet, want about %d", rem, est.Recommended)
		}
	})
	if t.Failed() {
		return
	}
	if _, err := os.Stat(filepath.Join(etc, "sysctl.d", SysctlFile)); err != nil {
		t.Errorf("sysctl file not written to the temp etc: %v", err)
	}
	for _, n := range names {
		if got := readLive(t, n); got != rootBefore[n] {
			t.Errorf("root namespace %s changed: %d -> %d", n, rootBefore[n], got)
		}
	}
	other.Do(t, func() {
		if got := readLive(t, Established); got != nsBefore[Established] {
			t.Errorf("second namespace established %d, want untouched %d", got, nsBefore[Established])
		}
	})

	ns.Do(t, func() {
		if _, err := Rollback(roots, nil); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if got := readLive(t, n); got != nsBefore[n] {
				t.Errorf("namespace %s after rollback %d, want %d", n, got, nsBefore[n])
			}
		}
	})
	for _, rel := range []string{"sysctl.d/" + SysctlFile, "modules-load.d/" + ModulesLoadFile, backupDir} {
		if _, err := os.Stat(filepath.Join(etc, rel)); err == nil {
			t.Errorf("%s left after rollback", rel)
		}
	}
	for _, n := range names {
		if got := readLive(t, n); got != rootBefore[n] {
			t.Errorf("root namespace %s changed: %d -> %d", n, rootBefore[n], got)
		}
	}
}

// scanNS dumps this namespace's table over ctnetlink into an Observer, the
// way the CLI does.
func scanNS(t *testing.T, h *Host, port uint16) *Observation {
	t.Helper()
	c, err := conntrack.Open()
	if err != nil {
		t.Fatalf("ctnetlink: %v", err)
	}
	defer c.Close()
	local, err := LocalAddrs("/proc")
	if err != nil {
		t.Fatal(err)
	}
	isLocal := map[netip.Addr]bool{}
	for _, a := range local {
		isLocal[a] = true
	}
	o := NewObserver(h.Sysctl[Established], h.Sysctl[Unacked])
	o.BeginScan(time.Now())
	seen := false
	err = c.Dump(context.Background(), conntrack.DumpOptions{}, func(e *conntrack.Entry) error {
		if e.Proto == conntrack.ProtoTCP && e.TCPState == conntrack.TCPEstablished {
			seen = seen || e.Orig.DstPort == port
			o.Add(Flow{Proto: e.Proto, Src: e.Orig.Src, Dst: e.Orig.Dst, SrcPort: e.Orig.SrcPort, DstPort: e.Orig.DstPort,
				Outbound: isLocal[e.Orig.Src.Unmap()], Remaining: e.Timeout})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !seen {
		t.Fatalf("no conntrack entry for the test flow to port %d: conntrack is not tracking", port)
	}
	cnt, _ := host.ReadInt("/proc/sys/net/netfilter/nf_conntrack_count")
	o.EndScan(int(cnt))
	return o.Observation()
}

func remaining(t *testing.T, port uint16) uint32 {
	t.Helper()
	c, err := conntrack.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var rem uint32
	found := false
	err = c.Dump(context.Background(), conntrack.DumpOptions{}, func(e *conntrack.Entry) error {
		if e.Proto == conntrack.ProtoTCP && e.Orig.DstPort == port {
			rem, found = e.Timeout, true
		}
		return nil
	})
	if err != nil || !found {
		t.Fatalf("entry for port %d: found %v, %v", port, found, err)
	}
	return rem
}

// TestRootPolicySnippet loads the ct timeout policy tune prints into a fresh
// namespace and checks that it does what the plan says: a new inbound flow
// to a listed port gets the short established timeout, a flow to another
// port keeps the global one.
func TestRootPolicySnippet(t *testing.T) {
	testutil.RequireRoot(t, "ip", "nft")
	victim, client := testutil.NewNS(t), testutil.NewNS(t)
	testutil.Veth(t, victim, "v0", "192.0.2.10/24", client, "c0", "192.0.2.20/24")
	victim.Script(t, statefulRules)

	h := &Host{Kernel: Kernel{Release: "6.18", Major: 6, Minor: 18}, MemTotal: 1 << 30, PageSize: 4096,
		Sysctl: map[string]int64{Max: 65536, Buckets: 65536, Established: 432000, Unacked: 300}, ListenPorts: []uint16{22, 443}}
	p := Recommend(h, nil, Budget{})
	if p.Policy == nil || len(p.Policy.Ports) != 1 || p.Policy.Ports[0] != 443 || p.Policy.Established != 600 {
		t.Fatalf("policy %+v", p.Policy)
	}
	victim.MustRun(t, "nft", "-f", writeTemp(t, p.Policy.Nft))

	var lns []net.Listener
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	victim.Do(t, func() {
		for _, port := range []string{"443", "8443"} {
			ln, err := net.Listen("tcp", "192.0.2.10:"+port)
			if err != nil {
				t.Fatal(err)
			}
			lns = append(lns, ln)
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
				}
			}()
		}
	})
	t.Cleanup(func() {
		for _, ln := range lns {
			ln.Close()
		}
	})
	checkPolicy(t, client, victim, 443, 8443)
}

// checkPolicy connects from client to the victim's port short (which the
// policy's 600 s timeout covers) and port long (which it must not), and
// checks the established timeouts of their entries.
func checkPolicy(t *testing.T, client, victim *testutil.NS, short, long uint16) {
	t.Helper()
	client.Do(t, func() {
		for _, port := range []uint16{short, long} {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("192.0.2.10:%d", port), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
		}
	})
	time.Sleep(200 * time.Millisecond) // the final ACK of each handshake
	victim.Do(t, func() {
		s, l := remaining(t, short), remaining(t, long)
		t.Logf("established timeout with the policy: :%d %d s, :%d %d s", short, s, long, l)
		if s > 600 || s < 590 {
			t.Errorf(":%d entry has %d s left, want the policy's 600", short, s)
		}
		if l < 431990 {
			t.Errorf(":%d entry has %d s left, want the global 432000", long, l)
		}
	})
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "policy.nft")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRootPolicySnippetNAT: on a host that NATs, the policy tune prints
// matches only flows to the host's own addresses. A client's flow to the
// host's :443 gets the short timeout; its flow to :9443, DNAT'ed to a
// "container" namespace's :443, keeps the global one (its tcp dport is 443
// after DNAT: without fib daddr type local it would match and break when
// idle).
func TestRootPolicySnippetNAT(t *testing.T) {
	testutil.RequireRoot(t, "ip", "nft")
	victim, client, ctr := testutil.NewNS(t), testutil.NewNS(t), testutil.NewNS(t)
	testutil.Veth(t, victim, "v0", "192.0.2.10/24", client, "c0", "192.0.2.20/24")
	testutil.Veth(t, victim, "d0", "172.17.0.1/24", ctr, "e0", "172.17.0.2/24")
	ctr.MustRun(t, "ip", "route", "add", "default", "via", "172.17.0.1")
	victim.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	victim.Script(t, statefulRules+`
nft add table ip nat
nft add chain ip nat pre '{type nat hook prerouting priority dstnat;}'
nft add rule ip nat pre tcp dport 9443 dnat to 172.17.0.2:443`)

	h := &Host{Kernel: Kernel{Release: "6.18", Major: 6, Minor: 18}, MemTotal: 1 << 30, PageSize: 4096,
		Sysctl: map[string]int64{Max: 65536, Buckets: 65536, Established: 432000, Unacked: 300}, ListenPorts: []uint16{443},
		NAT: []string{"nft: tcp dport 9443 dnat to 172.17.0.2:443"}}
	p := Recommend(h, nil, Budget{})
	if p.Policy == nil || !strings.Contains(p.Policy.Nft, "fib daddr type local") {
		t.Fatalf("policy %+v", p.Policy)
	}
	victim.MustRun(t, "nft", "-f", writeTemp(t, p.Policy.Nft))

	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	serve := func(ns *testutil.NS, addr string) {
		ns.Do(t, func() {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
				}
			}()
		})
	}
	serve(victim, "192.0.2.10:443")
	serve(ctr, "172.17.0.2:443")
	checkPolicy(t, client, victim, 443, 9443) // local :443, DNAT'ed :9443
}
