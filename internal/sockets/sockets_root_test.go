package sockets

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctguard/ctguard/internal/testutil"
)

func listen(t *testing.T, addr string, deferAccept bool) net.Listener {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		if !deferAccept {
			return nil
		}
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 30)
		}); err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c) // accepted and kept, never read
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln
}

// A client that sent a request has a served socket. A silent client has
// none: under TCP_DEFER_ACCEPT its request sock waits in SYN_RECV, and on a
// plain listener the accepted socket has received no byte.
func TestRootServedAndSilent(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNS(t)
	var set *Set
	ports := map[string]uint16{}
	ns.Do(t, func() {
		listen(t, "[::]:8443", true)
		listen(t, "[::]:8444", false)
		dial := func(name, addr string, talk bool) {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			if talk {
				c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
			}
			ports[name] = uint16(c.LocalAddr().(*net.TCPAddr).Port)
		}
		dial("talker-defer", "127.0.0.1:8443", true)
		dial("silent-defer", "[::1]:8443", false)
		dial("talker-plain", "127.0.0.1:8444", true)
		dial("silent-plain", "[::1]:8444", false)
		time.Sleep(200 * time.Millisecond) // let the server side accept
		var d Dumper
		var err error
		if set, err = d.Dump(context.Background()); err != nil {
			t.Fatal(err)
		}
		peers, err := Peers(context.Background(), []uint16{8444})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, p := range peers {
			got[p.String()] = true
		}
		for _, name := range []string{"talker-plain", "silent-plain"} {
			addr := "127.0.0.1"
			if name == "silent-plain" {
				addr = "[::1]"
			}
			if k := fmt.Sprintf("%s:%d", addr, ports[name]); !got[k] {
				t.Errorf("Peers(8444) lacks %s (%s): %v", k, name, peers)
			}
		}
		if len(peers) != 2 {
			t.Errorf("Peers(8444) = %v, want the two clients of :8444 only", peers)
		}
	})
	v4, v6 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")
	cases := []struct {
		name   string
		remote netip.Addr
		lport  uint16
		want   bool
	}{
		{"talker-defer", v4, 8443, true},
		{"silent-defer", v6, 8443, false},
		{"talker-plain", v4, 8444, true},
		{"silent-plain", v6, 8444, false},
	}
	for _, c := range cases {
		if got := set.Has(KeyOf(c.remote, ports[c.name], c.lport)); got != c.want {
			t.Errorf("%s: served = %v, want %v (%d served, %d silent)", c.name, got, c.want, set.Len(), set.Silent)
		}
	}
	if set.Silent == 0 {
		t.Error("no silent sockets counted")
	}
}

// TestRootListenersFull: a listener whose application never accepts fills
// its accept queue (backlog 2 here); Listeners reports it full, and an idle
// listener beside it not.
func TestRootListenersFull(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNS(t)
	var got []Listener
	ns.Do(t, func() {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: 8080, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}
		if err := unix.Listen(fd, 2); err != nil {
			t.Fatal(err)
		}
		listen(t, "127.0.0.1:8081", false)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for range 3 { // the kernel completes backlog+1 handshakes
			c, err := net.DialTimeout("tcp", "127.0.0.1:8080", time.Second)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if got, err = Listeners(ctx); err != nil {
			t.Fatal(err)
		}
	})
	by := map[uint16]Listener{}
	for _, l := range got {
		by[l.Local.Port()] = l
	}
	if l := by[8080]; !l.Full() || l.Backlog != 2 || l.Local.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("never-accepting listener: %+v (full %v), want a full queue of backlog 2", l, l.Full())
	}
	if l, ok := by[8081]; !ok || l.Full() {
		t.Errorf("accepting listener: %+v (listed %v), want listed and not full", l, ok)
	}
}
