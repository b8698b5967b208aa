package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctguard/ctguard/internal/testutil"
)

// TestControlRequestBounded: a request larger than maxRequest is refused
// with a clear error after reading at most that much.
func TestControlRequestBounded(t *testing.T) {
	testutil.RequireRoot(t) // the handler serves root peers only
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	srv, cli := conn(fds[0]), conn(fds[1])
	defer cli.Close()
	done := make(chan struct{})
	go func() { (&Daemon{}).handle(context.Background(), srv); close(done) }()
	go func() {
		// A string that never ends: the decoder would keep reading it.
		cli.Write([]byte(`{"op":"ban","target":"`))
		chunk := bytes.Repeat([]byte("a"), 64<<10)
		for range 2 * maxRequest / len(chunk) {
			if _, err := cli.Write(chunk); err != nil {
				return
			}
		}
	}()
	cli.SetReadDeadline(time.Now().Add(10 * time.Second))
	var resp Response
	if err := json.NewDecoder(cli).Decode(&resp); err != nil {
		t.Fatalf("no answer: %v", err)
	}
	if !strings.Contains(resp.Error, "request larger than") {
		t.Fatalf("answer %+v, want the request refused as too large", resp)
	}
	<-done
}
