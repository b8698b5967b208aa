package enforce

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/store"
	"github.com/ctguard/ctguard/internal/testutil"
	"github.com/vishvananda/netns"
)

// lab is an attacker and a victim namespace joined by veth, with a
// stateful rule in the victim (so conntrack tracks), ctguard's engine
// managing the victim's firewall, and the conntrack package as the
// purger.
type lab struct {
	t        *testing.T
	att, vic *testutil.NS
	be       labBackend
	fw       Firewall
	nft      *NFT   // fw, when the backend is nftables
	ips      *IPSet // fw, when the backend is ipset
	ct       *conntrack.Conn
	st       *store.Store
	eng      *Engine
	procRoot string // /proc/<pid> of a process inside the victim namespace
	now      func() time.Time
}

const (
	vic4 = "192.0.2.1"
	vic6 = "2001:db8::1"
	// Attacker addresses: all on the veth subnet, no routing needed.
	attAddrs = "192.0.2.2/24 192.0.2.3/24 192.0.2.4/24 192.0.2.5/24 192.0.2.66/24 192.0.2.67/24 192.0.2.69/24 192.0.2.130/24 " +
		"2001:db8::2/64 2001:db8::3/64 2001:db8::4/64 2001:db8::8000:5/64"
)

// labBackend is a firewall backend a lab runs on: nftables, or ipset with
// one of the iptables flavours.
type labBackend struct {
	name    string
	backend Backend
	flavour IPTablesFlavour
}

var (
	labNFT         = labBackend{"nftables", BackendNFTables, ""}
	labIPSetLegacy = labBackend{"ipset-legacy", BackendIPSet, IPTablesLegacy}
	labIPSetNFT    = labBackend{"ipset-nft", BackendIPSet, IPTablesNFT}
	// labBackends are the backends the shared root tests run on.
	labBackends = []labBackend{labNFT, labIPSetLegacy, labIPSetNFT}
)

// tools are the programs a lab on the backend runs.
func (b labBackend) tools() []string {
	if b.backend == BackendIPSet {
		return []string{"ip", "nft", "ipset", b.flavour.tool(false, ""), b.flavour.tool(false, "save"),
			b.flavour.tool(false, "restore"), b.flavour.tool(true, ""), b.flavour.tool(true, "save"), b.flavour.tool(true, "restore")}
	}
	return []string{"ip", "nft"}
}

// forEachBackend runs fn as a subtest per backend.
func forEachBackend(t *testing.T, fn func(t *testing.T, b labBackend)) {
	for _, b := range labBackends {
		t.Run(b.name, func(t *testing.T) { fn(t, b) })
	}
}

func newLab(t *testing.T, sshPorts ...uint16) *lab {
	t.Helper()
	return newLabOn(t, labNFT, sshPorts...)
}

func newLabOn(t *testing.T, be labBackend, sshPorts ...uint16) *lab {
	t.Helper()
	return newLabLoaded(t, be, (*lab).loadStateful, sshPorts...)
}

// newLabLoaded is newLabOn with the victim's firewall loaded by load
// (instead of the lab's stateful rule) before ctguard sets up its own.
func newLabLoaded(t *testing.T, be labBackend, load func(*lab), sshPorts ...uint16) *lab {
	t.Helper()
	testutil.RequireRoot(t, be.tools()...)
	l := &lab{t: t, att: testutil.NewNS(t), vic: testutil.NewNS(t), now: time.Now, be: be}
	testutil.Veth(t, l.att, "att0", attAddrs, l.vic, "vic0", vic4+"/24 "+vic6+"/64")
	load(l)

	h, err := netns.GetFromName(l.vic.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if be.backend == BackendIPSet {
		l.ips = NewIPSet(nil, IPSetOptions{NetNSFd: int(h), SSHPorts: sshPorts, IPTables: be.flavour})
		l.fw = l.ips
	} else {
		l.nft = NewNFT(nil, NFTOptions{NetNSFd: int(h), SSHPorts: sshPorts})
		l.fw = l.nft
	}
	l.vic.Do(t, func() {
		l.ct, err = conntrack.Open()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.ct.Close() })

	// A process parked in the victim namespace gives a procfs view of its
	// sockets and routes (/proc/<pid>/net follows that process).
	sleeper := exec.Command("ip", "netns", "exec", l.vic.Name, "sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	l.procRoot = "/proc/" + strconv.Itoa(sleeper.Process.Pid)
	// Wait until ip netns exec has switched namespaces (it execs sleep).
	deadline := time.Now().Add(3 * time.Second)
	for {
		b, _ := exec.Command("readlink", l.procRoot+"/exe").Output()
		if strings.Contains(string(b), "sleep") || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	l.st, err = store.Open(t.TempDir(), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.st.Close() })
	l.eng = New(Config{
		Store: l.st, Firewall: l.fw, Purger: l.ct,
		Allow: allow.Config{
			ProcRoot:   l.procRoot,
			ResolvConf: "/nonexistent",
			SSHPorts:   sshPorts,
			InterfaceAddrs: func() ([]netip.Prefix, error) {
				return []netip.Prefix{netip.MustParsePrefix(vic4 + "/24"), netip.MustParsePrefix(vic6 + "/64")}, nil
			},
		},
		Now: func() time.Time { return l.now() },
	})
	if _, err := l.eng.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return l
}

// loadStateful loads the stateful rule that makes conntrack track in the
// victim namespace (conntrack is lazy per namespace): with nft, or, on
// the ipset backend, with the iptables of its flavour, as such a host has.
func (l *lab) loadStateful() {
	if l.be.backend == BackendIPSet {
		for _, v6 := range []bool{false, true} {
			l.vic.MustRun(l.t, l.be.flavour.tool(v6, ""), "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
		}
		return
	}
	l.vic.Script(l.t, `nft add table inet t
nft add chain inet t c '{ type filter hook input priority 0; }'
nft add rule inet t c ct state established,related accept`)
}

// iptables runs the lab's iptables (or ip6tables) in the victim.
func (l *lab) iptables(v6 bool, args ...string) string {
	l.t.Helper()
	return l.vic.MustRun(l.t, append([]string{l.be.flavour.tool(v6, "")}, args...)...)
}

// elements reads the backend's ban sets back, by prefix.
func (l *lab) elements() map[netip.Prefix]Element {
	l.t.Helper()
	es, err := l.fw.Elements(context.Background())
	if err != nil {
		l.t.Fatal(err)
	}
	out := map[netip.Prefix]Element{}
	for _, e := range es {
		out[e.Prefix] = e
	}
	return out
}

// listing is the backend's own view of its objects, as an operator would
// list them (nft list table; ipset list and iptables-save).
func (l *lab) listing() string {
	l.t.Helper()
	if l.be.backend == BackendIPSet {
		return l.vic.MustRun(l.t, "ipset", "list") + l.vic.MustRun(l.t, l.be.flavour.tool(false, "save"), "-t", "raw") +
			l.vic.MustRun(l.t, l.be.flavour.tool(true, "save"), "-t", "raw")
	}
	return l.vic.MustRun(l.t, "nft", "list", "table", "inet", "ctguard")
}

// listen accepts TCP connections on port in the victim and keeps them
// open until the test ends.
func (l *lab) listen(port int) {
	l.t.Helper()
	var lns []net.Listener
	l.vic.Do(l.t, func() {
		for _, a := range []string{vic4, vic6} {
			ln, err := net.Listen("tcp", net.JoinHostPort(a, strconv.Itoa(port)))
			if err != nil {
				l.t.Fatal(err)
			}
			lns = append(lns, ln)
		}
	})
	var mu sync.Mutex
	var conns []net.Conn
	for _, ln := range lns {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				go io.Copy(io.Discard, c)
			}
		}()
	}
	l.t.Cleanup(func() {
		for _, ln := range lns {
			ln.Close()
		}
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
}

// dial opens n TCP connections from src (in the attacker namespace) to the
// victim's port, with a short timeout each, and returns those that
// connected; they stay open until the test ends.
func (l *lab) dial(src string, port, n int) []net.Conn {
	l.t.Helper()
	return l.dialTimeout(src, port, n, 300*time.Millisecond)
}

// dialTimeout is dial with a chosen per-connection timeout: short where a
// drop is expected, longer where success is (IPv6 neighbour discovery on a
// fresh source can delay the first handshake).
func (l *lab) dialTimeout(src string, port, n int, timeout time.Duration) []net.Conn {
	l.t.Helper()
	dst := vic4
	if strings.Contains(src, ":") {
		dst = vic6
	}
	var out []net.Conn
	l.att.Do(l.t, func() {
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		for range n {
			c, err := d.Dial("tcp", net.JoinHostPort(dst, strconv.Itoa(port)))
			if err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					l.t.Logf("dial from %s: %v", src, err)
				}
				continue
			}
			out = append(out, c)
		}
	})
	l.t.Cleanup(func() {
		for _, c := range out {
			c.Close()
		}
	})
	return out
}

// count is the number of conntrack entries from p in the victim.
func (l *lab) count(p string) int {
	l.t.Helper()
	n, err := l.ct.CountSource(context.Background(), pfx(p))
	if err != nil {
		l.t.Fatal(err)
	}
	return n
}

func (l *lab) counters() Counters {
	l.t.Helper()
	c, err := l.fw.Counters(context.Background())
	if err != nil {
		l.t.Fatal(err)
	}
	return c
}

func (l *lab) ban(p string, ttl time.Duration) BanResult {
	l.t.Helper()
	r, err := l.eng.Ban(context.Background(), BanRequest{Prefix: pfx(p), TTL: ttl, Reason: "test"})
	if err != nil {
		l.t.Fatalf("ban %s: %v", p, err)
	}
	return r
}

// pfx parses an address or prefix.
func pfx(s string) netip.Prefix {
	if strings.Contains(s, "/") {
		return netip.MustParsePrefix(s)
	}
	a := netip.MustParseAddr(s)
	return netip.PrefixFrom(a, a.BitLen())
}

// requireTracking checks that an unbanned source does create entries:
// without it, "0 entries after the ban" would prove nothing.
func (l *lab) requireTracking(src string, port int) {
	l.t.Helper()
	before := l.count(src)
	if c := l.dialTimeout(src, port, 3, 2*time.Second); len(c) != 3 {
		l.t.Fatalf("unbanned %s: %d of 3 connections succeeded", src, len(c))
	}
	if after := l.count(src); after < before+3 {
		l.t.Fatalf("conntrack is not tracking: %s has %d entries after 3 connections (before %d)", src, after, before)
	}
}
