package sdnotify

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// listen opens a fake service manager's notification socket at addr.
func listen(t *testing.T, addr string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recv reads one notification.
func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(buf[:n])
}

func TestSendsToSocketPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	c := listen(t, path)
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "")
	n, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if !n.Enabled() || n.WatchdogInterval() != 0 {
		t.Fatalf("enabled %v, watchdog %v", n.Enabled(), n.WatchdogInterval())
	}
	for _, step := range []struct {
		send func() error
		want string
	}{
		{n.Ready, "READY=1"},
		{n.Watchdog, "WATCHDOG=1"},
		{func() error { return n.Status("267/262144 entries (0.1 %), pressure calm") }, "STATUS=267/262144 entries (0.1 %), pressure calm"},
		{func() error { return n.Status("two\nlines") }, "STATUS=two lines"},
		{n.Stopping, "STOPPING=1"},
	} {
		if err := step.send(); err != nil {
			t.Fatal(err)
		}
		if got := recv(t, c); got != step.want {
			t.Fatalf("got %q, want %q", got, step.want)
		}
	}
}

func TestSendsToAbstractSocket(t *testing.T) {
	name := fmt.Sprintf("@ctguard-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	c := listen(t, name)
	n, err := New(name, "", "", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Ready(); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, c); got != "READY=1" {
		t.Fatalf("got %q", got)
	}
}

// Outside systemd nothing is sent and nothing fails; a nil notifier is the
// same.
func TestNoSocketIsNoOp(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "30000000")
	n, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	var none *Notifier
	for _, n := range []*Notifier{n, none} {
		if n.Enabled() || n.WatchdogInterval() != 0 {
			t.Fatalf("enabled %v, watchdog %v without a socket", n.Enabled(), n.WatchdogInterval())
		}
		for _, f := range []func() error{n.Ready, n.Stopping, n.Watchdog, func() error { return n.Status("x") }} {
			if err := f(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestWatchdogInterval(t *testing.T) {
	const pid = 4242
	for _, c := range []struct {
		usec, wpid string
		want       time.Duration
		err        string
	}{
		{"", "", 0, ""},
		{"30000000", "", 15 * time.Second, ""},
		{"30000000", "4242", 15 * time.Second, ""},
		{"30000000", "1", 0, ""}, // another process's watchdog
		{"1000", "", 500 * time.Microsecond, ""},
		{"0", "", 0, "WATCHDOG_USEC"},
		{"-5", "", 0, "WATCHDOG_USEC"},
		{"30s", "", 0, "WATCHDOG_USEC"},
		{"99999999999999999999", "", 0, "WATCHDOG_USEC"},
		{"30000000", "me", 0, "WATCHDOG_PID"},
	} {
		n, err := New("/run/systemd/notify", c.usec, c.wpid, pid)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("usec %q pid %q: err %v, want one naming %s", c.usec, c.wpid, err, c.err)
			}
		} else if err != nil {
			t.Errorf("usec %q pid %q: %v", c.usec, c.wpid, err)
		}
		if n == nil || !n.Enabled() {
			t.Fatalf("usec %q pid %q: no usable notifier", c.usec, c.wpid)
		}
		if got := n.WatchdogInterval(); got != c.want {
			t.Errorf("usec %q pid %q: interval %v, want %v", c.usec, c.wpid, got, c.want)
		}
	}
}

func TestBadSocket(t *testing.T) {
	if _, err := New("relative/notify", "", "", 1); err == nil || !strings.Contains(err.Error(), "NOTIFY_SOCKET") {
		t.Fatalf("relative path: %v", err)
	}
	// Nobody listens: the error names the notification.
	n, err := New(filepath.Join(t.TempDir(), "gone"), "", "", 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Ready(); err == nil || !strings.Contains(err.Error(), "sd_notify READY=1") {
		t.Fatalf("send to a missing socket: %v", err)
	}
}
