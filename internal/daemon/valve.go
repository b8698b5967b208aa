package daemon

import (
	"context"
	"net/netip"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/snapshot"
)

// valve frees room through the enforcer: idle entries of the holders first
// (most idle first), then the entries of the sources that grew the most,
// then the others'.
func (d *Daemon) valve(ctx context.Context, v *policy.Valve, maxDelete int) {
	free := min(v.Free, maxDelete)
	if free <= 0 {
		return
	}
	d.mu.Lock()
	cfg := d.agg.Config()
	d.mu.Unlock()
	growers := make(map[netip.Addr]bool, len(v.Growers))
	for _, g := range v.Growers {
		growers[g.Addr()] = true
	}
	const idleTier, growerTier = 2, 1
	rank := func(e *conntrack.Entry) (uint64, bool) {
		cl, idle := snapshot.Classify(e, &cfg)
		switch cl {
		case snapshot.Idle:
			return idleTier<<32 | uint64(idle), true
		case snapshot.Active, snapshot.Stalled:
			if growers[e.Orig.Src] {
				return growerTier<<32 | uint64(idle), true
			}
			return uint64(idle), true
		}
		return 0, false
	}
	r, err := d.eng.Valve(ctx, enforce.ValveRequest{Holders: v.Holders, Free: free, Rank: rank})
	if err != nil {
		d.log.Error("valve", "err", err)
		return
	}
	swept := 0
	if r.Deleted < free {
		// The holders did not free enough (many sources holding little
		// each): the most idle ESTABLISHED entries of any other source that
		// is not allowlisted go next, never an active one.
		idleOnly := func(e *conntrack.Entry) (uint64, bool) {
			cl, idle := snapshot.Classify(e, &cfg)
			return uint64(idle), cl == snapshot.Idle && !e.Orig.Src.IsLoopback()
		}
		sr, err := d.eng.Valve(ctx, enforce.ValveRequest{Free: free - r.Deleted, Rank: idleOnly, Sweep: true})
		if err != nil {
			d.log.Error("valve sweep", "err", err)
		}
		swept = sr.Deleted
		r.Deleted += sr.Deleted
	}
	if d.dryRun {
		d.log.Warn("EMERGENCY VALVE (dry run): would delete entries of the top holders", "would_delete", r.Deleted,
			"wanted", v.Free, "holders", len(v.Holders), "growers", len(v.Growers), "would_sweep", swept)
		return
	}
	d.mu.Lock()
	d.counters.ValveRuns++
	d.counters.ValveDeleted += uint64(r.Deleted)
	d.mu.Unlock()
	d.log.Warn("EMERGENCY VALVE: deleted entries of the top holders to make room", "deleted", r.Deleted, "wanted", v.Free,
		"candidates", r.Candidates, "holders", len(v.Holders), "growers", len(v.Growers), "swept_idle", swept)
}
