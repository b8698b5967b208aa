package daemon

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"github.com/ctguard/ctguard/internal/config"
	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/forecast"
	"github.com/ctguard/ctguard/internal/sockets"
)

// Run restores the stored bans, then loops until ctx ends.
func (d *Daemon) Run(ctx context.Context) error {
	res, err := d.eng.Start(ctx)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	d.log.Info("ctguard running", "dry_run", d.dryRun, "restored_bans", res.Restored, "took", res.Took.Round(time.Millisecond),
		"reader", d.src.ReaderName(), "max", d.sys.Max, "established_timeout", d.agg.Config().EstablishedTimeout)
	d.startFleet(ctx)
	defer func() {
		d.stopping()
		d.stopFleet() // the alerts still queued go out first
	}()
	var lastScan, lastPoll time.Time
	lastCount := -1
	for {
		d.watchdog(time.Now())
		d.mu.Lock()
		cfg := d.cfg
		pressure := d.result.Pressure
		d.mu.Unlock()
		// The accept queues are read at every tick (a quarter second when
		// watched), the count at every poll: a full queue calls for a
		// scan sooner than the table's pace would.
		full, filled := d.pollService(ctx, cfg.Daemon.WatchListeners)
		if filled || full || time.Since(lastPoll) >= cfg.Daemon.Poll {
			lastPoll = time.Now()
			st, err := d.src.Count(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				d.log.Error("read conntrack count", "err", err)
			} else {
				d.addSample(time.Now(), st)
				due := filled || time.Since(lastScan) >= scanInterval(cfg.Daemon, pressure, full) ||
					(lastCount >= 0 && int(st.Count)-lastCount >= cfg.Daemon.ScanOnGrowth)
				if due {
					lastScan, lastCount = time.Now(), int(st.Count)
					d.cycle(ctx)
					d.cycled(ctx)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-d.reload:
			d.doReload()
			lastScan = time.Time{}
		case <-time.After(d.wait(tick(cfg.Daemon))):
		}
	}
}

// tick is the loop's step: the poll, or servicePoll when the accept
// queues are watched (a listing of the listeners costs tens of
// microseconds; the count is still read once per poll).
func tick(d config.Daemon) time.Duration {
	if d.WatchListeners {
		return min(d.Poll, servicePoll)
	}
	return d.Poll
}

// pollService reads the accept queues (when daemon.watch_listeners is on)
// and reports whether an episode is on and whether a queue just filled.
func (d *Daemon) pollService(ctx context.Context, watch bool) (on, filled bool) {
	var ls []sockets.Listener
	var err error
	if watch {
		ls, err = d.svc.list(ctx)
		if err != nil && ctx.Err() != nil {
			return false, false
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.svc.update(ls, err, time.Now(), d.log)
}

func (d *Daemon) doReload() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfgPath != "" {
		c, err := config.Load(d.cfgPath)
		if err != nil {
			d.log.Error("reload: config rejected, keeping the running one", "err", err)
			return
		}
		// What the process was built from stays; say so instead of half
		// applying it.
		old := d.cfg
		c.Daemon.DryRun = d.dryRun
		var kept []string
		for _, k := range []struct {
			name    string
			changed bool
		}{
			{"daemon.state_dir", c.Daemon.StateDir != old.Daemon.StateDir},
			{"daemon.socket", c.Daemon.Socket != old.Daemon.Socket},
			{"daemon.reader", c.Daemon.Reader != old.Daemon.Reader},
			{"daemon.procfs", c.Daemon.Procfs != old.Daemon.Procfs},
			{"daemon.sockets", c.Daemon.Sockets != old.Daemon.Sockets},
			{"metrics", c.Metrics != old.Metrics},
			{"enforce.backend", c.Enforce != old.Enforce},
			{"crowdsec", !reflect.DeepEqual(c.CrowdSec, old.CrowdSec)},
			{"log", c.Log != old.Log},
		} {
			if k.changed {
				kept = append(kept, k.name)
			}
		}
		c.Daemon.StateDir, c.Daemon.Socket, c.Daemon.Reader = old.Daemon.StateDir, old.Daemon.Socket, old.Daemon.Reader
		c.Daemon.Procfs, c.Daemon.Sockets, c.Metrics, c.Log = old.Daemon.Procfs, old.Daemon.Sockets, old.Metrics, old.Log
		c.Enforce, c.CrowdSec = old.Enforce, old.CrowdSec
		if len(kept) > 0 {
			d.log.Warn("reload: these settings need a restart; keeping the running values", "keys", kept)
		}
		d.cfg = c
		d.eng.SetAllowConfig(d.allowConfig(c))
	}
	if err := d.loadHost(); err != nil {
		d.log.Error("reload: host facts", "err", err)
	}
	d.allowAt = time.Time{} // re-read the allowlist at the next cycle
	d.log.Info("reloaded", "config", d.cfgPath)
}

const sampleWindow = time.Minute

func (d *Daemon) addSample(t time.Time, st conntrack.Stats) {
	d.mu.Lock()
	defer d.mu.Unlock()
	// Only the count and the limit: the kernel counters come with each scan.
	d.stats.Count, d.stats.Max = st.Count, st.Max
	d.samples = append(d.samples, forecast.Sample{Time: t, Count: float64(st.Count)})
	cut := 0
	for cut < len(d.samples) && t.Sub(d.samples[cut].Time) > sampleWindow {
		cut++
	}
	d.samples = d.samples[cut:]
}

// rate is the growth over the recent window (entries/s).
func (d *Daemon) rate() (float64, bool) {
	// Weigh the last 15 s: an attack's onset must not be averaged away.
	s := d.samples
	for len(s) > 2 && s[len(s)-1].Time.Sub(s[0].Time) > 15*time.Second {
		s = s[1:]
	}
	return forecast.Rate(s)
}
