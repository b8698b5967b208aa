package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeListener fails its first accepts with errs, then hands out conns,
// then reports itself closed.
type fakeListener struct {
	net.Listener
	errs  []error
	conns []net.Conn
}

func (f *fakeListener) Accept() (net.Conn, error) {
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		return nil, err
	}
	if len(f.conns) > 0 {
		c := f.conns[0]
		f.conns = f.conns[1:]
		return c, nil
	}
	return nil, net.ErrClosed
}

// TestAcceptLoopSurvivesErrors: running out of file descriptors does not
// end the control socket's loop; it backs off, warns once, and serves the
// next connection.
func TestAcceptLoopSurvivesErrors(t *testing.T) {
	var buf bytes.Buffer
	a, b := net.Pipe()
	defer b.Close()
	emfile := &net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	ln := &fakeListener{errs: []error{emfile, emfile, emfile}, conns: []net.Conn{a}}
	served := make(chan net.Conn, 1)
	err := acceptLoop(context.Background(), ln, slog.New(slog.NewTextHandler(&buf, nil)), func(c net.Conn) { served <- c })
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("loop ended with %v, want only when the listener is closed", err)
	}
	select {
	case c := <-served:
		if c != a {
			t.Fatal("served the wrong connection")
		}
	case <-time.After(time.Second):
		t.Fatal("the connection after the errors was never served")
	}
	if n := strings.Count(buf.String(), "accept failed"); n != 1 {
		t.Errorf("%d warnings for one streak of errors, want 1: %q", n, buf.String())
	}
}

// TestMetricsBounds: the metrics server has every timeout and a header
// limit, and its listener holds at most maxMetricsConns connections.
func TestMetricsBounds(t *testing.T) {
	s := metricsServer(nil)
	if s.ReadHeaderTimeout == 0 || s.ReadTimeout == 0 || s.WriteTimeout == 0 || s.IdleTimeout == 0 || s.MaxHeaderBytes == 0 {
		t.Fatalf("unbounded metrics server: %+v", s)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no loopback TCP here: %v", err)
	}
	ln := &limitListener{Listener: inner, slots: make(chan struct{}, 2)}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	for range 3 {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	first := <-accepted
	<-accepted
	select {
	case <-accepted:
		t.Fatal("a third connection was accepted while two held the slots")
	case <-time.After(200 * time.Millisecond):
	}
	first.Close()
	first.Close() // a second close frees nothing more
	select {
	case <-accepted:
	case <-time.After(2 * time.Second):
		t.Fatal("closing a connection did not free its slot")
	}
	if len(ln.slots) != 2 {
		t.Fatalf("%d slots held, want 2", len(ln.slots))
	}
}
