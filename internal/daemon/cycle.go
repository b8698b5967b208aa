package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/crowdsec"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/policy"
)

// cycle is one scan, decision and enforcement.
func (d *Daemon) cycle(ctx context.Context) {
	start := time.Now()
	st, err := d.src.Stats(ctx)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Error("read conntrack stats", "err", err)
		}
		return
	}
	d.mu.Lock()
	d.stats = st
	d.mu.Unlock()
	if rr, err := d.eng.Reconcile(ctx); err != nil {
		d.log.Error("reconcile", "err", err)
	} else if rr.Rebuilt {
		d.mu.Lock()
		d.counters.Rebuilds++
		d.mu.Unlock()
		d.log.Warn("ctguard table was missing or wrong: rebuilt", "problem", rr.Problem, "restored_bans", rr.Restored)
	}
	d.mu.Lock()
	cfg := d.cfg
	refreshLocal := time.Since(d.allowAt) >= cfg.Allow.Refresh || d.allowed == nil
	d.mu.Unlock()
	if refreshLocal {
		// Addresses change (DHCP, SLAAC): inbound attribution follows.
		if local, err := d.localAddrs(); err == nil {
			d.mu.Lock()
			d.agg.SetLocal(local)
			d.mu.Unlock()
		}
	}
	d.mu.Lock()
	agg := d.agg
	d.mu.Unlock()
	snap, err := d.src.Scan(ctx, agg)
	if d.src.SocketsErr != nil && !d.socketsWarned {
		d.socketsWarned = true
		d.log.Warn("cannot list TCP sockets: the orphan signal is off", "err", d.src.SocketsErr)
	}
	if err == nil {
		if peers, ok := d.src.SocketPeers(d.allowConfig(cfg).SSHPorts); ok {
			d.mu.Lock()
			d.sshPeers, d.sshPeersAt = peers, time.Now()
			d.mu.Unlock()
		}
		// The allowlist after the scan: its SSH sessions are this scan's.
		if l, err := d.eng.Allowlist(); err != nil {
			d.log.Error("allowlist", "err", err)
		} else {
			d.mu.Lock()
			d.allowed = l
			if refreshLocal {
				d.allowAt = time.Now()
			}
			d.mu.Unlock()
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			d.mu.Lock()
			d.counters.ScanErrors++
			d.counters.LastScanError = err.Error()
			d.mu.Unlock()
			d.log.Error("scan", "err", err)
		}
		return
	}
	now := time.Now()
	active, err := d.st.ActiveIndex(now)
	if err != nil {
		d.log.Error("read active bans", "err", err)
		return
	}
	bans := newBanIndex(active, snap.Config.V4Bits, snap.Config.V6Bits)
	d.mu.Lock()
	rate, rateOK := d.rate()
	list := d.allowed
	d.mu.Unlock()
	earlier := d.growth.observe(now, snap, cfg.Policy.GrowthWindow)
	in := policy.Input{
		Now: now, Snapshot: snap, Count: int(st.Count), Max: int(st.Max), RatePerSec: rate, RateOK: rateOK, Earlier: earlier,
		Banned: bans.covered, BannedIn: bans.hostsIn, BannedGroupsIn: bans.groupsIn,
		History: func(p netip.Prefix) policy.Offence {
			b, err := d.st.GetBan(p)
			if err != nil {
				return policy.Offence{}
			}
			return policy.Offence{Count: b.Count, Last: b.Last}
		},
	}
	if list != nil {
		in.Allowed = func(p netip.Prefix) (string, bool) {
			e, ok := list.Check(p)
			return e.String(), ok
		}
	}
	res := policy.Decide(in, cfg.Policy)
	decided := time.Now()
	events := d.enforce(ctx, now, res)
	enforced := time.Now()
	if res.Valve != nil {
		d.valve(ctx, res.Valve, cfg.Daemon.ValveMaxDelete)
	}
	if n, err := d.eng.RecordUnrecorded(ctx); err != nil {
		d.log.Error("bans in the kernel still lack a store record", "err", err)
	} else if n > 0 {
		d.log.Warn("recorded bans that a failed store write had left in the kernel only", "bans", n)
	}
	if time.Since(d.prunedAt) >= pruneEvery {
		d.prunedAt = time.Now()
		if err := d.eng.Prune(); err != nil {
			d.log.Error("prune ban history", "err", err)
		}
	}
	d.noteLosing(now, res)
	d.mu.Lock()
	d.snap, d.result, d.cycleAt, d.earlier = snap, res, now, earlier
	d.cycles++
	d.counters.Scans++
	d.obs.scanned(snap.Duration)
	d.events = append(d.events, events...)
	if len(d.events) > maxEvents {
		d.events = append(d.events[:0:0], d.events[len(d.events)-maxEvents:]...)
	}
	d.mu.Unlock()
	d.log.Debug("cycle", "entries", snap.Total, "count", st.Count, "max", st.Max, "pressure", res.Pressure,
		"threshold", res.Threshold, "bans", len(res.Bans), "scan", snap.Duration.Round(time.Millisecond),
		"decide", decided.Sub(now).Round(time.Millisecond), "enforce", enforced.Sub(decided).Round(time.Millisecond),
		"took", time.Since(start).Round(time.Millisecond))
}

// enforce applies the decisions (or, in dry-run, records them in the
// throw-away store only) and logs one line per decision with its evidence.
func (d *Daemon) enforce(ctx context.Context, now time.Time, res policy.Result) []Event {
	var events []Event
	if res.Breaker != nil {
		d.mu.Lock()
		d.counters.BreakerTrips++
		d.mu.Unlock()
		d.log.Warn("BLAST-RADIUS BREAKER: more bans wanted than allowed in one cycle; banning only the top ones",
			"wanted", res.Breaker.Wanted, "cap", res.Breaker.Cap, "pressure", res.Pressure)
	}
	for _, s := range res.Skips {
		events = append(events, Event{Time: now, Target: s.Target, Action: "skip", Detail: s.Why, Decision: policy.Decision{Target: s.Target, Score: s.Score}})
		d.log.Info("not banned", "target", s.Target, "score", s.Score, "why", s.Why)
	}
	return append(events, d.ban(ctx, now, res.Bans, true)...)
}

// ban applies decisions and returns their events. A prefix ban refused by
// the allowlist (which changed since the decision) falls back to the member
// bans it replaced, once (fallback false for those).
func (d *Daemon) ban(ctx context.Context, now time.Time, bans []policy.Decision, fallback bool) (events []Event) {
	if len(bans) == 0 {
		return nil
	}
	reqs := make([]enforce.BanRequest, len(bans))
	for i, b := range bans {
		reqs[i] = enforce.BanRequest{Prefix: b.Target, TTL: b.TTL, Reason: b.Reason, Evidence: evidence(b)}
	}
	results, err := d.eng.BanMany(ctx, reqs)
	if err != nil {
		d.log.Error("ban batch failed", "bans", len(reqs), "err", err)
	}
	action := "ban"
	if d.dryRun {
		action = "would-ban"
	}
	var instead []policy.Decision
	d.mu.Lock()
	defer func() {
		d.mu.Unlock()
		if len(instead) > 0 {
			events = append(events, d.ban(ctx, now, instead, false)...)
		}
	}()
	for i, b := range bans {
		ev := Event{Time: now, Target: b.Target, Action: action, Decision: b}
		var r enforce.BanResult
		if i < len(results) {
			r = results[i]
		}
		var refusal *allow.Refusal
		switch {
		case r.Err != nil:
			ev.Action, ev.Detail = "refused", r.Err.Error()
			d.counters.BanErrors++
			if fallback && errors.As(r.Err, &refusal) && len(b.Instead) > 0 {
				instead = append(instead, b.Instead...)
				ev.Detail += fmt.Sprintf("; banning its %d members instead", len(b.Instead))
			}
		case r.CoveredBy.IsValid():
			ev.Action, ev.Detail = "covered", "already covered by "+r.CoveredBy.String()
		case err != nil && i >= len(results):
			ev.Action, ev.Detail = "error", err.Error()
			d.counters.BanErrors++
		default:
			d.counters.BansByReason[b.Reason]++
			d.pushed(reqs[i], crowdsec.FromPolicy(b, now))
			d.counters.SocketsClosed += uint64(r.Ban.SocketsClosed)
			verb := "closed"
			if d.dryRun {
				verb = "would close"
			}
			ev.Detail = fmt.Sprintf("purged %d, remaining %d, %s %d sockets", r.Ban.Purged, r.Ban.Remaining, verb, r.Ban.SocketsClosed)
			if r.Ban.CloseErr != "" {
				ev.Detail += " (" + r.Ban.CloseErr + ")"
			}
		}
		events = append(events, ev)
		var gain uint32
		if b.Growth != nil {
			gain = b.Growth.Gain
		}
		if r.Scoped {
			ev.Detail += ", SSH ports left open (covers an open SSH session)"
		}
		d.log.Info("decision", "action", ev.Action, "target", b.Target, "reason", b.Reason, "score", b.Score, "gain", gain,
			"threshold", b.Threshold, "pressure", b.Pressure, "ttl", b.TTL, "entries", b.Counts.Entries,
			"idle", b.Counts.Idle, "orphan", b.Counts.Orphan, "half_open", b.Counts.HalfOpen, "active", b.Counts.Active,
			"members", b.Members, "previous_bans", b.Offences, "outcome", ev.Detail)
	}
	return events
}

func evidence(b policy.Decision) string {
	why := fmt.Sprintf("score %.1f >= %.0f at %s pressure", b.Score, b.Threshold, b.Pressure)
	if g := b.Growth; g != nil {
		why = fmt.Sprintf("grew by %d ESTABLISHED entries in %s (%.0f%% of the %d it holds) at %s pressure, score %.1f",
			g.Gain, g.Window.Round(time.Second), 100*g.Young(), g.Held, b.Pressure, b.Score)
	}
	return fmt.Sprintf("%s: %d entries (idle %d, orphan %d, half-open %d, active %d, stalled %d, closing %d, other %d), oldest idle %ds, members %d, previous bans %d",
		why, b.Counts.Entries, b.Counts.Idle, b.Counts.Orphan, b.Counts.HalfOpen, b.Counts.Active,
		b.Counts.Stalled, b.Counts.Closing, b.Counts.Other, b.Counts.MaxIdle, b.Members, b.Offences)
}

// lostWarnEvery rate-limits the WARN line of cycles that ban nothing under
// pressure (the loop runs every second when critical).
const lostWarnEvery = 10 * time.Second

// noteLosing records and logs a cycle under high or critical pressure that
// banned nothing: the top holders and why each was spared.
func (d *Daemon) noteLosing(now time.Time, res policy.Result) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if res.Pressure < policy.High || len(res.Bans) > 0 {
		d.losing = nil
		return
	}
	d.counters.PressureNoBan++
	d.losing = &Losing{Time: now, Pressure: res.Pressure, Spared: res.Spared}
	if now.Sub(d.lostWarn) < lostWarnEvery {
		d.lostMute++
		return
	}
	holders := make([]string, len(res.Spared))
	for i, s := range res.Spared {
		holders[i] = fmt.Sprintf("%s (%d entries, %d active, grew %d in %s): %s", s.Target, s.Counts.Entries, s.Counts.Active,
			s.Growth.Gain, s.Growth.Window.Round(time.Second), s.Why)
	}
	d.log.Warn("pressure is "+res.Pressure.String()+" and this cycle banned nothing", "top_holders", holders,
		"unevictable_fill", res.UnevictableFill, "threshold", res.Threshold, "similar_cycles_not_logged", d.lostMute)
	d.lostWarn, d.lostMute = now, 0
}
