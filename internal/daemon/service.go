package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ctguard/ctguard/internal/config"
	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/sockets"
)

// service watches the accept queues of the host's listening sockets at
// every poll. A full queue is the service refusing new clients right now,
// whatever the table's fill: a few hundred silent connections hold every
// worker of a web server long before they matter to a table of 262,144
// entries. While a queue is full the daemon scans at the critical interval,
// so a ban (which closes the banned peers' sockets) comes within seconds
// instead of at the calm interval.
//
// An episode lasts until no queue has been full for serviceQuiet: an attack
// that refills the queue right after each ban is one episode (one WARN),
// scanned at the critical pace throughout.
type service struct {
	list    func(context.Context) ([]sockets.Listener, error)
	full    []sockets.Listener // full at the last poll that found one
	since   time.Time          // start of the current episode (zero: none)
	drained time.Time          // first poll with no full queue (zero: still full)
	// errWarned mutes repeated listing errors until one succeeds.
	errWarned bool
}

// servicePoll is how often the accept queues are read (at most): a queue
// that fills, or fills again after a ban, is seen within this long.
const servicePoll = 250 * time.Millisecond

// serviceQuiet is how long the queues must stay below their limits for an
// episode to end.
const serviceQuiet = 10 * time.Second

// ServiceState is what status reports about the accept queues.
type ServiceState struct {
	Full    []sockets.Listener `json:"full"` // at the last poll that found a full queue
	Since   time.Time          `json:"since"`
	Drained time.Time          `json:"drained,omitzero"` // set once no queue is full
}

// update takes a listing of the listeners and reports whether an episode
// is on, and whether a queue just filled (at the start of an episode, or
// again after it had drained): that calls for a scan now. It logs when an
// episode starts (WARN) and ends (INFO). A failed listing keeps the last
// answer.
func (s *service) update(ls []sockets.Listener, err error, now time.Time, log *slog.Logger) (on, filled bool) {
	if err != nil {
		if !s.errWarned {
			log.Warn("cannot read the listening sockets' accept queues; scans keep the table's pace only", "err", err)
			s.errWarned = true
		}
		return !s.since.IsZero(), false
	}
	s.errWarned = false
	var full []sockets.Listener
	for _, l := range ls {
		if l.Full() {
			full = append(full, l)
		}
	}
	switch {
	case len(full) > 0:
		filled = s.since.IsZero() || !s.drained.IsZero() || len(s.full) == 0
		if s.since.IsZero() {
			s.since = now
			log.Warn("a listening socket's accept queue is full: the service is turning new clients away; scanning at the critical interval until it drains",
				"listeners", listenerNames(full))
		}
		s.full, s.drained = full, time.Time{}
	case s.since.IsZero():
	case s.drained.IsZero():
		s.drained = now
	case now.Sub(s.drained) >= serviceQuiet:
		log.Info("accept queues drained", "episode", s.drained.Sub(s.since).Round(time.Millisecond))
		s.full, s.since, s.drained = nil, time.Time{}, time.Time{}
	}
	return !s.since.IsZero(), filled
}

// state is the current episode, nil when there is none.
func (s *service) state() *ServiceState {
	if s.since.IsZero() {
		return nil
	}
	return &ServiceState{Full: append([]sockets.Listener(nil), s.full...), Since: s.since, Drained: s.drained}
}

func listenerNames(ls []sockets.Listener) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = fmt.Sprintf("%s %d/%d", l.Local, l.Queue, l.Backlog)
	}
	return out
}

// scanInterval is how long after a scan the next one is due: the
// interval of the pressure level, at most the critical one while an
// accept queue is full.
func scanInterval(d config.Daemon, p policy.Pressure, serviceFull bool) time.Duration {
	iv := d.Interval[p]
	if serviceFull {
		iv = min(iv, d.Interval[policy.Critical])
	}
	return iv
}

// fullNow is how many listeners were full at the last poll.
func (s *service) fullNow() int {
	if s.since.IsZero() || !s.drained.IsZero() {
		return 0
	}
	return len(s.full)
}
