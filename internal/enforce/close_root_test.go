package enforce

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/sockets"
)

// TestRootBanFreesWorkers: a server with a fixed pool of workers that each
// block reading a request is filled by silent bots from one prefix; a legit
// client waits in the accept queue. Once the prefix is banned (and the
// bans close the bots' sockets) the legit client is served within 2 s. The
// operator's SSH session from an address inside the prefix stays open.
func TestRootBanFreesWorkers(t *testing.T) {
	l := newLab(t, 2222)
	l.eng.closer = &sockets.Closer{Open: func() (fd int, err error) {
		l.vic.Do(t, func() { fd, err = sockets.Open() })
		return fd, err
	}}
	const workers = 4
	var ln, sshLn net.Listener
	l.vic.Do(t, func() {
		var err error
		if ln, err = net.Listen("tcp", vic4+":8080"); err != nil {
			t.Fatal(err)
		}
		if sshLn, err = net.Listen("tcp", vic4+":2222"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { ln.Close(); sshLn.Close() })
	for range workers { // the pool: accept, read one request line, answer, close
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
					c.Write([]byte("OK\n"))
				}
				c.Close()
			}
		}()
	}
	go func() { // stands in for sshd: echoes
		for {
			c, err := sshLn.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	session := l.dial("192.0.2.69", 2222, 1)
	bots := append(l.dial("192.0.2.66", 8080, 2), l.dial("192.0.2.67", 8080, 2)...)
	if len(session) != 1 || len(bots) != workers {
		t.Fatalf("setup: %d sessions, %d bots", len(session), len(bots))
	}
	time.Sleep(200 * time.Millisecond) // every worker now blocks on a bot

	served := make(chan error, 1)
	legit := l.dialTimeout("192.0.2.2", 8080, 1, 2*time.Second)
	if len(legit) != 1 {
		t.Fatal("legit client could not connect")
	}
	go func() {
		c := legit[0]
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("GET /\n")); err != nil {
			served <- err
			return
		}
		_, err := bufio.NewReader(c).ReadString('\n')
		served <- err
	}()
	select {
	case err := <-served:
		t.Fatalf("legit client served while the pool was full: %v", err)
	case <-time.After(time.Second):
	}

	start := time.Now()
	r := l.ban("192.0.2.64/26", time.Hour)
	if !r.Scoped || r.Ban.SocketsClosed != workers || r.Ban.CloseErr != "" {
		t.Fatalf("ban: scoped %v, closed %d sockets (%q), want %d", r.Scoped, r.Ban.SocketsClosed, r.Ban.CloseErr, workers)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("legit client: %v", err)
		}
		t.Logf("legit client served %v after the ban", time.Since(start).Round(time.Millisecond))
	case <-time.After(2 * time.Second):
		t.Fatal("legit client not served within 2 s of the ban")
	}
	session[0].SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := session[0].Write([]byte("ping")); err != nil {
		t.Fatalf("session: %v", err)
	}
	if _, err := io.ReadFull(session[0], make([]byte, 4)); err != nil {
		t.Fatalf("the operator's session was closed: %v", err)
	}
}
