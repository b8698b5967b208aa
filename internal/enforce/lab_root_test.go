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
	fw       *NFT
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

func newLab(t *testing.T, sshPorts ...uint16) *lab {
	t.Helper()
	testutil.RequireRoot(t, "ip", "nft")
	l := &lab{t: t, att: testutil.NewNS(t), vic: testutil.NewNS(t), now: time.Now}
	testutil.Veth(t, l.att, "att0", attAddrs, l.vic, "vic0", vic4+"/24 "+vic6+"/64")
	l.loadStateful()

	h, err := netns.GetFromName(l.vic.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	l.fw = NewNFT(nil, NFTOptions{NetNSFd: int(h), SSHPorts: sshPorts})
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
// victim namespace (conntrack is lazy per namespace).
func (l *lab) loadStateful() {
	l.vic.Script(l.t, `nft add table inet t
nft add chain inet t c '{ type filter hook input priority 0; }'
nft add rule inet t c ct state established,related accept`)
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
