package enforce

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// ExportingOptions configures Exporting.
type ExportingOptions struct {
	// Known says whether p was ever one of ctguard's bans (its store has a
	// record of it). For a set without timeouts and without comments it
	// decides, at Setup, which elements ctguard left behind for bans that
	// ended while it was not running: only those it explains are removed,
	// the host's own are kept. Nil: none are.
	Known func(netip.Prefix) bool
	// Now is the clock (tests); nil: time.Now.
	Now func() time.Time
}

// Exporting returns a Firewall that does what fw does and mirrors every
// change into the export set x: what fw's sets gain, x gains, what they
// lose, x loses. The export is best effort: a failure is logged and never
// fails a ban.
//
// A set with timeout support gets each ban's timeout and ends it by
// itself. A set without keeps what it is given, so Exporting ends those
// elements itself: it remembers when each exported ban ends and removes
// the ended ones at every Check (the daemon checks its table every cycle,
// at most 30 s apart), and at Setup (the start) it removes what it had
// exported for bans that ended while ctguard was not running: the elements
// with ctguard's comment in a set with comments, else those Known says
// were ctguard's bans.
func Exporting(fw Firewall, x *ExportSet, log *slog.Logger, opt ExportingOptions) Firewall {
	return exporting(fw, x, log, opt)
}

// exportTarget is what Exporting needs of an *ExportSet (tests fake it).
type exportTarget interface {
	Info() ExportInfo
	Add(ctx context.Context, elems []Element) (ExportResult, error)
	Remove(ctx context.Context, prefixes []netip.Prefix) error
	Elements(ctx context.Context) ([]ExportedElement, error)
}

func exporting(fw Firewall, x exportTarget, log *slog.Logger, opt ExportingOptions) *exportingFirewall {
	if opt.Now == nil {
		opt.Now = time.Now
	}
	return &exportingFirewall{Firewall: fw, x: x, log: log, opt: opt, ends: map[netip.Prefix]time.Time{}}
}

type exportingFirewall struct {
	Firewall
	x   exportTarget
	log *slog.Logger
	opt ExportingOptions

	mu sync.Mutex
	// ends is when each exported ban ends (sets without timeouts only).
	ends map[netip.Prefix]time.Time
}

func (f *exportingFirewall) Setup(ctx context.Context, elems []Element) (TableID, error) {
	id, err := f.Firewall.Setup(ctx, elems)
	if err != nil {
		return id, err
	}
	if !f.x.Info().Timeouts {
		f.removeLeftovers(ctx, elems)
	}
	f.add(ctx, elems)
	return id, nil
}

// removeLeftovers removes what ctguard exported for bans that are no
// longer active (active: elems).
func (f *exportingFirewall) removeLeftovers(ctx context.Context, active []Element) {
	info := f.x.Info()
	in, err := f.x.Elements(ctx)
	if err != nil {
		f.log.Warn("export set: cannot list it to remove ended bans", "set", info.Name, "err", err)
		return
	}
	keep := make(map[netip.Prefix]bool, len(active))
	for _, e := range active {
		keep[e.Prefix.Masked()] = true
	}
	var stale []netip.Prefix
	for _, e := range in {
		if keep[e.Prefix] {
			continue
		}
		ours := e.Comment == IPTablesComment
		if !info.Comments {
			ours = f.opt.Known != nil && f.opt.Known(e.Prefix)
		}
		if ours {
			stale = append(stale, e.Prefix)
		}
	}
	if len(stale) == 0 {
		return
	}
	if err := f.x.Remove(ctx, stale); err != nil {
		f.log.Warn("export set: removing bans that ended while ctguard was stopped failed", "set", info.Name, "bans", len(stale), "err", err)
		return
	}
	f.log.Info("export set: removed bans that ended while ctguard was stopped", "set", info.Name, "bans", len(stale))
}

func (f *exportingFirewall) Check(ctx context.Context, want TableID) (string, error) {
	problem, err := f.Firewall.Check(ctx, want)
	if !f.x.Info().Timeouts {
		f.expire(ctx)
	}
	return problem, err
}

// expire removes the exported bans that have ended.
func (f *exportingFirewall) expire(ctx context.Context) {
	now := f.opt.Now()
	var ended []netip.Prefix
	f.mu.Lock()
	for p, end := range f.ends {
		if !now.Before(end) {
			ended = append(ended, p)
		}
	}
	f.mu.Unlock()
	if len(ended) == 0 {
		return
	}
	if err := f.x.Remove(ctx, ended); err != nil {
		f.log.Warn("export set: removing ended bans failed (retried at the next check)", "set", f.x.Info().Name, "bans", len(ended), "err", err)
		return
	}
	f.mu.Lock()
	for _, p := range ended {
		if end, ok := f.ends[p]; ok && !now.Before(end) { // not renewed meanwhile
			delete(f.ends, p)
		}
	}
	f.mu.Unlock()
	f.log.Debug("export set: removed ended bans", "set", f.x.Info().Name, "bans", len(ended))
}

func (f *exportingFirewall) Apply(ctx context.Context, c Change) error {
	if err := f.Firewall.Apply(ctx, c); err != nil {
		return err
	}
	if len(c.Delete) > 0 {
		ps := make([]netip.Prefix, len(c.Delete))
		for i, e := range c.Delete {
			ps[i] = e.Prefix
		}
		if err := f.x.Remove(ctx, ps); err != nil {
			f.log.Warn("export set: removing ended bans failed", "set", f.x.Info().Name, "bans", len(ps), "err", err)
		} else {
			f.mu.Lock()
			for _, p := range ps {
				delete(f.ends, p.Masked())
			}
			f.mu.Unlock()
		}
	}
	f.add(ctx, c.Add)
	return nil
}

func (f *exportingFirewall) add(ctx context.Context, elems []Element) {
	if len(elems) == 0 {
		return
	}
	r, err := f.x.Add(ctx, elems)
	if err != nil {
		f.log.Warn("export set: adding bans failed", "set", f.x.Info().Name, "bans", len(elems), "err", err)
		return
	}
	for _, s := range r.Skipped {
		f.log.Info("export set cannot hold this ban", "set", f.x.Info().Name, "prefix", s.Prefix, "why", s.Reason)
	}
	if f.x.Info().Timeouts {
		return
	}
	skipped := make(map[netip.Prefix]bool, len(r.Skipped))
	for _, s := range r.Skipped {
		skipped[s.Prefix] = true
	}
	now := f.opt.Now()
	f.mu.Lock()
	for _, e := range elems {
		if p := e.Prefix.Masked(); !skipped[p] {
			f.ends[p] = now.Add(e.TTL)
		}
	}
	f.mu.Unlock()
}
