package sockets

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctguard/ctguard/internal/testutil"
)

// A silent client of a TCP_DEFER_ACCEPT listener has no served socket (its
// request sock waits in SYN_RECV); a client that sent a request has one.
func TestRootDeferAcceptOrphan(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNS(t)
	var ln net.Listener
	var talker, silent net.Conn
	var set *Set
	ns.Do(t, func() {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 30)
			})
			if err != nil {
				return err
			}
			return serr
		}}
		var err error
		if ln, err = lc.Listen(context.Background(), "tcp", "[::]:8443"); err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
			}
		}()
		if talker, err = net.DialTimeout("tcp", "127.0.0.1:8443", time.Second); err != nil {
			t.Fatal(err)
		}
		talker.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		if silent, err = net.DialTimeout("tcp", "[::1]:8443", time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond) // let the request be accepted
		var d Dumper
		if set, err = d.Dump(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
	defer ln.Close()
	defer talker.Close()
	defer silent.Close()
	tp := uint16(talker.LocalAddr().(*net.TCPAddr).Port)
	sp := uint16(silent.LocalAddr().(*net.TCPAddr).Port)
	if !set.Has(KeyOf(netip.MustParseAddr("127.0.0.1"), tp, 8443)) {
		t.Errorf("the talking client has no served socket (%d sockets)", set.Len())
	}
	if set.Has(KeyOf(netip.MustParseAddr("::1"), sp, 8443)) {
		t.Error("the silent client of a TCP_DEFER_ACCEPT listener counted as served")
	}
	// The clients' own ends are served sockets too (outbound, local port = theirs).
	if !set.Has(KeyOf(netip.MustParseAddr("::1"), 8443, sp)) {
		t.Error("the silent client's own socket is missing")
	}
}
