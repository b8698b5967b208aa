package daemon

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/config"
	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/sockets"
)

// TestServiceWatch: a full accept queue starts an episode (one WARN naming
// the listener), keeps it while full, survives a failed listing, and ends
// with one INFO when the queue drains.
func TestServiceWatch(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var s service
	t0 := time.Date(2026, 12, 3, 2, 0, 0, 0, time.UTC)
	web := netip.MustParseAddrPort("198.51.100.2:80")
	ok := []sockets.Listener{{Local: web, Queue: 3, Backlog: 511}, {Local: netip.MustParseAddrPort("[::]:22"), Backlog: 128}}
	full := []sockets.Listener{{Local: web, Queue: 512, Backlog: 511}, ok[1]}

	if on, _ := s.update(ok, nil, t0, log); on || s.state() != nil || buf.Len() != 0 {
		t.Fatalf("healthy queues: full=%v state=%+v log=%q", s.full, s.state(), buf.String())
	}
	if on, filled := s.update(full, nil, t0.Add(time.Second), log); !on || !filled {
		t.Fatal("a full queue was not reported as filled")
	}
	if st := s.state(); st == nil || len(st.Full) != 1 || st.Full[0].Local != web || !st.Since.Equal(t0.Add(time.Second)) {
		t.Fatalf("state %+v", st)
	}
	if on, filled := s.update(full, nil, t0.Add(2*time.Second), log); !on || filled {
		t.Fatalf("still full: on %v, filled %v; want on, not filled again", on, filled)
	}
	if on, _ := s.update(nil, errors.New("sock_diag: boom"), t0.Add(3*time.Second), log); !on {
		t.Fatal("the episode ended when the listing failed")
	}
	// Drained: the episode (and the critical pace) lasts serviceQuiet more;
	// a refill within it is the same episode.
	if on, _ := s.update(ok, nil, t0.Add(4*time.Second), log); !on || s.state().Drained != t0.Add(4*time.Second) {
		t.Fatalf("episode ended at once when the queue drained: %+v", s.state())
	}
	if on, filled := s.update(full, nil, t0.Add(5*time.Second), log); !on || !filled || !s.state().Drained.IsZero() {
		t.Fatal("a refill did not continue the episode as filled again")
	}
	s.update(ok, nil, t0.Add(6*time.Second), log)
	if on, _ := s.update(ok, nil, t0.Add(6*time.Second+serviceQuiet-time.Millisecond), log); !on {
		t.Fatal("the episode ended before the queues were quiet for serviceQuiet")
	}
	if on, _ := s.update(ok, nil, t0.Add(6*time.Second+serviceQuiet), log); on || s.state() != nil {
		t.Fatal("the episode did not end after serviceQuiet")
	}
	out := buf.String()
	if strings.Count(out, "accept queue is full") != 1 || !strings.Contains(out, "198.51.100.2:80 512/511") {
		t.Errorf("want one WARN naming the listener, got %q", out)
	}
	if strings.Count(out, "cannot read the listening sockets") != 1 || !strings.Contains(out, `msg="accept queues drained" episode=5s`) {
		t.Errorf("want one listing error and the end of the episode, got %q", out)
	}
}

// TestScanIntervalServiceFull: a full accept queue brings the next scan to
// the critical interval, never later than the pressure's own.
func TestScanIntervalServiceFull(t *testing.T) {
	d := config.Default().Daemon
	if got := scanInterval(d, policy.Calm, false); got != d.Interval[policy.Calm] {
		t.Errorf("calm: %v", got)
	}
	for p := policy.Calm; p <= policy.Critical; p++ {
		if got := scanInterval(d, p, true); got != d.Interval[policy.Critical] {
			t.Errorf("%s with a full queue: %v, want %v", p, got, d.Interval[policy.Critical])
		}
	}
	if got := tick(d); got != servicePoll {
		t.Errorf("tick with the accept queues watched: %v, want %v", got, servicePoll)
	}
	d.WatchListeners = false
	if got := tick(d); got != d.Poll {
		t.Errorf("tick unwatched: %v, want the poll %v", got, d.Poll)
	}
}
