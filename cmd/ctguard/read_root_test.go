package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/testutil"
)

// lab is a victim namespace with a stateful ruleset and servers, joined by
// veth to a client namespace that owns several source addresses.
type lab struct {
	victim, client *testutil.NS
	v4, v6         string // victim addresses
	mu             sync.Mutex
	conns          []net.Conn // closed at cleanup
}

func (l *lab) keep(c net.Conn) {
	l.mu.Lock()
	l.conns = append(l.conns, c)
	l.mu.Unlock()
}

func newLab(t *testing.T) *lab {
	testutil.RequireRoot(t, "nft", "conntrack", "ip")
	l := &lab{victim: testutil.NewNS(t), client: testutil.NewNS(t), v4: "198.51.100.10", v6: "2001:db8:100::10"}
	var caddrs []string
	for i := 1; i <= 5; i++ {
		caddrs = append(caddrs, fmt.Sprintf("198.51.100.%d/24", i), fmt.Sprintf("2001:db8:100::%d/64", i))
	}
	testutil.Veth(t, l.victim, "v0", l.v4+"/24 "+l.v6+"/64", l.client, "c0", strings.Join(caddrs, " "))
	// Conntrack is lazy per namespace: a stateful rule makes it track.
	l.victim.Script(t, `nft -f - <<'EOF'
table inet lab {
  chain input { type filter hook input priority 0; policy accept; ct state established,related accept; }
}
EOF`)
	// The host's own outbound flow to a peer (must not count against it):
	// the victim connects out to a server in the client namespace.
	var lnPeer net.Listener
	l.client.Do(t, func() {
		var err error
		if lnPeer, err = net.Listen("tcp", "198.51.100.5:5432"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { lnPeer.Close() })
	go l.acceptAll(lnPeer)
	var tcp net.Listener
	var udp net.PacketConn
	l.victim.Do(t, func() {
		var err error
		if tcp, err = net.Listen("tcp", ":443"); err != nil {
			t.Fatal(err)
		}
		if udp, err = net.ListenPacket("udp", ":443"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { tcp.Close(); udp.Close() })
	go l.acceptAll(tcp)
	go func() { // echo every datagram once: replied UDP entries
		buf := make([]byte, 1500)
		for {
			n, a, err := udp.ReadFrom(buf)
			if err != nil {
				return
			}
			udp.WriteTo(buf[:n], a)
		}
	}()
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, c := range l.conns {
			c.Close()
		}
	})
	return l
}

func (l *lab) acceptAll(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		l.keep(c)
		go io.Copy(io.Discard, c) // keep it open, read whatever comes
	}
}

// flows opens n TCP connections and sends n UDP datagrams from each client
// source address src to the victim's port 443.
func (l *lab) flows(t *testing.T, src, dst string, n int) {
	t.Helper()
	l.client.Do(t, func() {
		for i := 0; i < n; i++ {
			d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
			c, err := d.Dial("tcp", net.JoinHostPort(dst, "443"))
			if err != nil {
				t.Fatalf("dial from %s: %v", src, err)
			}
			l.keep(c)
			u, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)}, &net.UDPAddr{IP: net.ParseIP(dst), Port: 443})
			if err != nil {
				t.Fatal(err)
			}
			u.Write([]byte("ping"))
			u.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 16)
			if _, err := u.Read(buf); err != nil {
				t.Fatalf("udp echo to %s from %s: %v", dst, src, err)
			}
			// Kept open: a closed socket's port can be picked again by the
			// next datagram socket, which then shares its conntrack entry.
			l.keep(u)
		}
	})
}

// conntrackBySource counts `conntrack -L` entries per original source.
func conntrackBySource(t *testing.T, ns *testutil.NS) map[string]int {
	t.Helper()
	m := map[string]int{}
	for _, fam := range []string{"ipv4", "ipv6"} {
		out, err := ns.Output("conntrack", "-L", "-f", fam)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			for _, f := range strings.Fields(sc.Text()) {
				if v, ok := strings.CutPrefix(f, "src="); ok {
					m[netip.MustParseAddr(v).String()]++
					break
				}
			}
		}
	}
	return m
}

func TestRootTopMatchesConntrackL(t *testing.T) {
	l := newLab(t)
	want := map[string]int{}
	for i := 1; i <= 4; i++ {
		s4, s6 := fmt.Sprintf("198.51.100.%d", i), fmt.Sprintf("2001:db8:100::%d", i)
		l.flows(t, s4, l.v4, i*3)
		l.flows(t, s6, l.v6, i*2)
		want[s4], want[s6] = 2*i*3, 2*i*2 // one TCP and one UDP entry per flow
	}
	l.victim.Do(t, func() { // the victim's own outbound connection
		c, err := net.DialTimeout("tcp", "198.51.100.5:5432", 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		l.keep(c)
	})
	ref := conntrackBySource(t, l.victim)
	if ref["198.51.100.10"] != 1 {
		t.Fatalf("conntrack -L does not show the victim's outbound flow: %v", ref)
	}
	for k, v := range want {
		if ref[k] != v {
			t.Fatalf("setup: conntrack -L shows %d entries from %s, want %d (%v)", ref[k], k, v, ref)
		}
	}
	for _, reader := range []string{"netlink", "proc"} {
		var out, errs string
		var code int
		l.victim.Do(t, func() { out, errs, code = runCLI(t, "top", "--json", "-n", "100", "--reader", reader) })
		if code != 0 {
			t.Fatalf("top --reader %s: exit %d: %s", reader, code, errs)
		}
		var top topJSON
		if err := json.Unmarshal([]byte(out), &top); err != nil {
			t.Fatalf("top --json: %v\n%s", err, out)
		}
		rows := top.Rows
		got := map[string]int{}
		for _, r := range rows {
			got[r.Source] = int(r.Entries)
			if r.Active+r.Idle+r.Stalled+r.HalfOpen+r.Closing+r.Other != r.Entries {
				t.Errorf("%s: classes do not add up: %+v", reader, r)
			}
			if r.Active != r.Entries/2 || r.Other != r.Entries/2 {
				t.Errorf("%s: %s should hold fresh TCP (active) and replied UDP (other): %+v", reader, r.Source, r)
			}
		}
		if len(got) != len(want) {
			t.Errorf("%s: top lists %v, want exactly %v (the outbound flow's peer must not appear)", reader, got, want)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s holds %d per top, %d per conntrack -L", reader, k, got[k], v)
			}
		}
	}

	var out, errs string
	var code int
	l.victim.Do(t, func() { out, errs, code = runCLI(t, "top", "--json", "--prefix", "--v6-prefix", "64") })
	var ptop topJSON
	if code != 0 || json.Unmarshal([]byte(out), &ptop) != nil {
		t.Fatalf("top --prefix: exit %d %s %s", code, errs, out)
	}
	prows := ptop.Rows
	if len(prows) != 2 || prows[0].Source != "198.51.100.0/24" || prows[0].Entries != 60 || *prows[0].Members != 4 ||
		prows[1].Source != "2001:db8:100::/64" || prows[1].Entries != 40 {
		t.Errorf("prefixes: %s", out)
	}

	l.victim.Do(t, func() { out, errs, code = runCLI(t, "status", "--json", "--sample", "1s") })
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errs)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	total := 101 // 100 inbound + the outbound flow
	if st["count"] != float64(total) || st["max"].(float64) < float64(total) || st["rate_per_min"] == nil {
		t.Errorf("status: %s", out)
	}
	if _, ok := st["eta_seconds"]; !ok || st["eta_seconds"] != nil {
		t.Errorf("eta_seconds must be present and null on a table that does not grow: %v", st["eta_seconds"])
	}
	states := st["states"].(map[string]any)
	if states["ESTABLISHED"] != float64(51) {
		t.Errorf("states %v, want ESTABLISHED 51", states)
	}
}

func TestProcForcedMissing(t *testing.T) {
	// A procfs root whose conntrack sysctls exist but whose nf_conntrack file
	// does not: the forced /proc reader must say so.
	root := t.TempDir()
	mustWrite(t, root+"/sys/net/netfilter/nf_conntrack_max", "262144\n")
	_, errs, code := runCLI(t, "top", "--reader", "proc", "--procfs", root)
	if code != 1 || !strings.Contains(errs, "CONFIG_NF_CONNTRACK_PROCFS") {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
}
