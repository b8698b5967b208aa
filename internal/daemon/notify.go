package daemon

import (
	"context"
	"fmt"
	"time"
)

// Notifier is the service manager the daemon reports to (systemd's
// sd_notify; internal/sdnotify implements it). Every method may fail: the
// daemon logs the failure and carries on.
type Notifier interface {
	// Ready says start-up is complete.
	Ready() error
	// Stopping says shutdown began.
	Stopping() error
	// Watchdog is the keep-alive ping.
	Watchdog() error
	// Status is a one-line state for `systemctl status`.
	Status(string) error
	// WatchdogInterval is how often Watchdog must be called; 0: never.
	WatchdogInterval() time.Duration
}

// notifier is the loop's side of the service manager. Only the loop (Run)
// uses it, so it needs no lock.
type notifier struct {
	n     Notifier // nil: nobody listens
	every time.Duration
	// pinged is the last watchdog ping, ready whether READY=1 was sent,
	// cycles the cycle count at the last report, status the last STATUS=
	// line, failed the last failure logged.
	pinged time.Time
	ready  bool
	cycles uint64
	status string
	failed string
}

// watchdog pings the service manager when the interval has passed since
// the last ping. The loop calls it once per turn: a loop stuck in a scan,
// a ban or a netlink call stops pinging, and systemd kills and restarts
// the daemon.
func (d *Daemon) watchdog(now time.Time) {
	s := &d.notify
	if s.n == nil || s.every <= 0 || now.Sub(s.pinged) < s.every {
		return
	}
	s.pinged = now
	d.notifyErr(s.n.Watchdog())
}

// wait is how long the loop may sleep before its next turn: its tick, but
// never so long that a watchdog ping would be late.
func (d *Daemon) wait(tick time.Duration) time.Duration {
	if s := &d.notify; s.n != nil && s.every > 0 {
		return min(tick, s.every)
	}
	return tick
}

// cycled reports the state after a cycle and, after
// the first one, that start-up is complete: the stored bans were restored
// before the loop began, and the table has been scanned and acted on once.
// A first cycle that failed counts too (it is logged, shown in the status
// and retried like any later one): waiting for a good one would have
// systemd kill a daemon whose restored bans already protect the host.
func (d *Daemon) cycled(ctx context.Context) {
	s := &d.notify
	if s.n == nil || ctx.Err() != nil {
		return // a cycle cut short by shutdown is no start-up
	}
	d.mu.Lock()
	ok := d.cycles > s.cycles // the cycle completed its scan
	s.cycles = d.cycles
	line := fmt.Sprintf("%d/%d entries", d.stats.Count, d.stats.Max)
	if d.stats.Max > 0 {
		line += fmt.Sprintf(" (%.1f %%)", 100*float64(d.stats.Count)/float64(d.stats.Max))
	}
	line += ", pressure " + d.result.Pressure.String()
	if !ok {
		line = "last cycle failed (see the journal); " + line
	}
	if d.dryRun {
		line += "; dry run"
	}
	d.mu.Unlock()
	if line != s.status {
		s.status = line
		d.notifyErr(s.n.Status(line))
	}
	if !s.ready {
		s.ready = true
		d.notifyErr(s.n.Ready())
	}
}

// stopping tells the service manager that shutdown began.
func (d *Daemon) stopping() {
	if d.notify.n != nil {
		d.notifyErr(d.notify.n.Stopping())
	}
}

// notifyErr logs a failure to reach the service manager once, not at
// every ping.
func (d *Daemon) notifyErr(err error) {
	s := &d.notify
	if err == nil {
		s.failed = ""
		return
	}
	if err.Error() != s.failed {
		s.failed = err.Error()
		d.log.Warn("cannot notify the service manager", "err", err)
	}
}
