package daemon

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/config"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/sdnotify"
	"github.com/ctguard/ctguard/internal/sockets"
	"github.com/ctguard/ctguard/internal/store"
)

// note is one notification the fake service manager received.
type note struct {
	text string
	at   time.Time
}

// fakeManager is systemd's side of NOTIFY_SOCKET: a unixgram socket in a
// temporary directory whose datagrams arrive on notes.
func fakeManager(t *testing.T) (string, <-chan note) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	notes := make(chan note, 1000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := ln.Read(buf)
			if err != nil {
				return
			}
			notes <- note{string(buf[:n]), time.Now()}
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return path, notes
}

// gate blocks the first call after arm until open (or the test ends), and
// says when that call arrived.
type gate struct {
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func newGate() *gate { return &gate{entered: make(chan struct{}), release: make(chan struct{})} }

func (g *gate) pass(ctx context.Context) {
	if g.armed.CompareAndSwap(true, false) {
		close(g.entered)
		select {
		case <-g.release:
		case <-ctx.Done():
		}
	}
}

func (g *gate) waitEntered(t *testing.T, what string) {
	t.Helper()
	select {
	case <-g.entered:
	case <-time.After(10 * time.Second):
		t.Fatalf("the loop never reached %s", what)
	}
}

// expect reads notifications until one equal to want (or, with a trailing
// '*', starting with it) arrives, and returns it; the ones before it must
// not be any of refuse.
func expect(t *testing.T, notes <-chan note, want string, within time.Duration, refuse ...string) note {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case n := <-notes:
			if p, ok := strings.CutSuffix(want, "*"); (ok && strings.HasPrefix(n.text, p)) || n.text == want {
				return n
			}
			for _, r := range refuse {
				if strings.HasPrefix(n.text, r) {
					t.Fatalf("got %q while waiting for %q", n.text, want)
				}
			}
		case <-deadline:
			t.Fatalf("no %q within %v", want, within)
		}
	}
}

// quiet asserts that no notification starting with one of refuse arrives
// for d.
func quiet(t *testing.T, notes <-chan note, d time.Duration, refuse ...string) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case n := <-notes:
			for _, r := range refuse {
				if strings.HasPrefix(n.text, r) {
					t.Fatalf("got %q", n.text)
				}
			}
		case <-deadline:
			return
		}
	}
}

// Under systemd (a fake NOTIFY_SOCKET, WatchdogSec=1s): READY=1 only once
// the stored bans are back in the firewall and the first cycle is done,
// with a STATUS= line; WATCHDOG=1 within the interval while the loop
// turns and none while it hangs; STOPPING=1 at the end.
func TestRunNotifiesServiceManager(t *testing.T) {
	const watchdog = time.Second
	sock, notes := fakeManager(t)
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", strconv.FormatInt(watchdog.Microseconds(), 10))
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	notifier, err := sdnotify.FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if notifier.WatchdogInterval() != watchdog/2 {
		t.Fatalf("watchdog interval %v", notifier.WatchdogInterval())
	}

	h := newFakeHost(t, 4096).idle("203.0.113.110", 300)
	h.write(t)
	c := config.Default()
	c.Daemon.Reader, c.Daemon.Procfs = "proc", h.procfs
	c.Daemon.StateDir = t.TempDir()
	c.Daemon.Poll = 100 * time.Millisecond
	c.Daemon.Sockets, c.Daemon.CloseSockets, c.Daemon.WatchListeners = false, false, true
	c.Allow.ResolvConf = "/nonexistent"
	// A ban from an earlier run, to be restored at start.
	stored := netip.MustParsePrefix("198.51.100.9/32")
	st, err := store.Open(c.Daemon.StateDir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.RecordBan(store.BanRequest{Prefix: stored, TTL: time.Hour, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The first cycle reads the host's addresses (Interfaces), every turn
	// of the loop the listeners: gates there hold the first cycle and hang
	// the loop.
	firstCycle, hang := newGate(), newGate()
	fw := enforce.NewFake(nil)
	var log bytes.Buffer
	d, err := New(ctx, Options{
		Log: slog.New(slog.NewTextHandler(&log, nil)), Config: c,
		Firewall: fw, Purger: &enforce.FakePurger{Entries: map[netip.Addr]int{netip.MustParseAddr("203.0.113.110"): 300}},
		Interfaces: func() ([]netip.Prefix, error) {
			firstCycle.pass(ctx)
			return []netip.Prefix{netip.MustParsePrefix("192.0.2.10/24")}, nil
		},
		Listeners: func(context.Context) ([]sockets.Listener, error) {
			hang.pass(ctx)
			return nil, nil
		},
		Notify: notifier,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	firstCycle.armed.Store(true)
	ran := make(chan error, 1)
	go func() { ran <- d.Run(ctx) }()

	// Held in its first cycle: the bans are restored, but it is not ready.
	firstCycle.waitEntered(t, "its first cycle")
	if !fw.Drops(stored.Addr()) {
		t.Fatal("the first cycle began before the stored ban was restored")
	}
	quiet(t, notes, 300*time.Millisecond, "READY=1", "STATUS=")
	close(firstCycle.release)
	status := expect(t, notes, "STATUS=*", 5*time.Second, "READY=1")
	if !strings.HasPrefix(status.text, "STATUS=300/4096 entries (7.3 %), pressure ") {
		t.Errorf("status %q", status.text)
	}
	expect(t, notes, "READY=1", 5*time.Second)
	d.mu.Lock()
	cycles := d.cycles
	d.mu.Unlock()
	if cycles < 1 {
		t.Fatal("READY=1 before the first cycle completed")
	}
	if !fw.Drops(netip.MustParseAddr("203.0.113.110")) {
		t.Errorf("the first cycle did not ban the bot:\n%s", log.String())
	}

	// Alive: a ping at least once per WatchdogSec.
	last := expect(t, notes, "WATCHDOG=1", watchdog)
	for range 3 {
		n := expect(t, notes, "WATCHDOG=1", 2*watchdog, "READY=1")
		if gap := n.at.Sub(last.at); gap > watchdog {
			t.Errorf("watchdog pings %v apart, over WatchdogSec=%v", gap.Round(time.Millisecond), watchdog)
		}
		last = n
	}

	// Hung: no ping (a ping sent just before the hang may still arrive).
	hang.armed.Store(true)
	hang.waitEntered(t, "the listeners")
	quiet(t, notes, 200*time.Millisecond)
	quiet(t, notes, 2*watchdog, "WATCHDOG=1")
	close(hang.release)
	expect(t, notes, "WATCHDOG=1", watchdog)

	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	expect(t, notes, "STOPPING=1", 5*time.Second, "READY=1")
	if strings.Contains(log.String(), "cannot notify") {
		t.Errorf("notification failures logged:\n%s", log.String())
	}
}

// Without a service manager (no NOTIFY_SOCKET, or a nil Notify) the loop
// runs as before.
func TestRunWithoutServiceManager(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n, err := sdnotify.FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	for _, notify := range []Notifier{n, nil} {
		f := newFakeDaemon(t, newFakeHost(t, 4096).idle("203.0.113.110", 300), nil)
		f.d.notify = notifier{}
		if notify != nil {
			f.d.notify = notifier{n: notify, every: notify.WatchdogInterval()}
		}
		if got := f.d.wait(time.Second); got != time.Second {
			t.Fatalf("wait %v without a watchdog", got)
		}
		f.d.watchdog(time.Now())
		f.d.cycle(context.Background())
		f.d.cycled(context.Background())
		f.d.stopping()
		if strings.Contains(f.log.String(), "cannot notify") {
			t.Fatalf("logged:\n%s", f.log)
		}
	}
}
