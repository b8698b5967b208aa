package sockets

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/testutil"
)

// TestRootCloseSockets: a ban's targets close the server-side sockets of
// their peers (accepted ones blocked in a read, and ones still in the
// accept queue), but not on kept ports, not of spared peers, not of peers
// outside the targets; the server's blocked reads return at once.
func TestRootCloseSockets(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNS(t)
	const srv = "127.0.0.100"
	var mu sync.Mutex
	byPeer := map[string]chan error{}
	ns.MustRun(t, "ip", "link", "set", "lo", "up")
	ns.Do(t, func() {
		for _, port := range []string{"8080", "22"} {
			ln, err := net.Listen("tcp", "[::]:"+port) // dual stack: v4 peers arrive v4-mapped
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
					ch := make(chan error, 1)
					mu.Lock()
					byPeer[c.RemoteAddr().String()+">"+port] = ch
					mu.Unlock()
					go func() { // a worker blocked reading a request
						_, err := c.Read(make([]byte, 1))
						ch <- err
						c.Close()
					}()
				}
			}()
		}
		// A listener nobody accepts from: its connections wait in the queue.
		queue, err := net.Listen("tcp4", srv+":8081")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { queue.Close() })
	})
	var clients []net.Conn
	t.Cleanup(func() {
		for _, c := range clients {
			c.Close()
		}
	})
	dial := func(src, port string) net.Conn {
		var c net.Conn
		ns.Do(t, func() {
			d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
			var err error
			if c, err = d.Dial("tcp", srv+":"+port); err != nil {
				t.Fatal(err)
			}
		})
		clients = append(clients, c)
		return c
	}
	bot1, bot2 := dial("127.0.0.2", "8080"), dial("127.0.0.2", "8080")
	bot3 := dial("127.0.0.3", "8080")
	queued := dial("127.0.0.2", "8081")
	session := dial("127.0.0.3", "22")
	spared := dial("127.0.0.9", "8080")
	outside := dial("127.0.0.20", "8080")
	time.Sleep(200 * time.Millisecond) // let the accept loops run
	worker := func(c net.Conn, port string) chan error {
		mu.Lock()
		defer mu.Unlock()
		ch := byPeer[c.LocalAddr().String()+">"+port]
		if ch == nil {
			t.Fatalf("no worker for %s", c.LocalAddr())
		}
		return ch
	}

	targets := []Target{
		{Prefix: netip.MustParsePrefix("127.0.0.0/28"), KeepTCPPorts: []uint16{22}},
		{Prefix: netip.MustParsePrefix("127.0.0.20/32"), KeepTCPPorts: []uint16{8080}},
		{Prefix: netip.MustParsePrefix("198.51.100.0/24")}, // holds nothing
	}
	spare := func(a netip.Addr) bool { return a == netip.MustParseAddr("127.0.0.9") }
	var dry, closed []int
	ns.Do(t, func() {
		var err error
		if dry, err = (&Closer{DryRun: true}).CloseSockets(context.Background(), targets, spare); err != nil {
			t.Fatal(err)
		}
		if closed, err = (&Closer{}).CloseSockets(context.Background(), targets, spare); err != nil {
			t.Fatal(err)
		}
	})
	// bot1, bot2, bot3 accepted on 8080, and the queued one on 8081.
	if fmt.Sprint(dry) != "[4 0 0]" || fmt.Sprint(closed) != "[4 0 0]" {
		t.Fatalf("dry run %v, closed %v, want [4 0 0] each", dry, closed)
	}
	for _, c := range []net.Conn{bot1, bot2, bot3} {
		select {
		case err := <-worker(c, "8080"):
			if err == nil {
				t.Fatalf("worker of %s read data", c.LocalAddr())
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("worker of %s still blocked: socket not closed", c.LocalAddr())
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
			t.Fatalf("client %s: %v, want a reset", c.LocalAddr(), err)
		}
	}
	queued.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := queued.Read(make([]byte, 1)); !isReset(err) {
		t.Fatalf("queued client: %v, want a reset", err)
	}
	for name, c := range map[string]net.Conn{"ssh session": session, "spared peer": spared, "peer outside": outside} {
		port := "8080"
		if c == session {
			port = "22"
		}
		c.Write([]byte("x"))
		select {
		case err := <-worker(c, port):
			if err != nil {
				t.Fatalf("%s: its socket was closed: %v", name, err)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: its worker never got the byte", name)
		}
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && (errors.Is(err, errConnReset) || errors.Is(err, io.EOF))
}
