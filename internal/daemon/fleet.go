package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/crowdsec"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/store"
)

// startFleet opens the link to CrowdSec's Local API when [crowdsec] turns
// push or pull on. A link that cannot start (an unreadable secret file)
// is logged and shown in status; local defence goes on without it.
func (d *Daemon) startFleet(ctx context.Context) {
	d.mu.Lock()
	cfg := d.cfg.CrowdSec
	d.mu.Unlock()
	if !cfg.Enabled() {
		return
	}
	c, err := crowdsec.New(cfg, crowdsec.Options{
		Logger:    d.log.With("link", "crowdsec"),
		UserAgent: "ctguard/" + d.obs.build.Version,
		Apply: crowdsec.ApplyFunc(func(news, deleted []crowdsec.Decision) {
			d.applyPulled(ctx, news, deleted)
		}),
	})
	if err != nil {
		d.log.Error("crowdsec link not started; local defence goes on without it", "err", err)
		d.mu.Lock()
		d.fleetErr = err.Error()
		d.mu.Unlock()
		return
	}
	d.mu.Lock()
	d.fleet = c
	d.mu.Unlock()
	d.log.Info("crowdsec link", "push", cfg.Push, "pull", cfg.Pull)
	done := make(chan struct{})
	d.fleetDone = done
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
}

// stopFleet waits for the link to end after ctx: the push side sends what
// is still queued, within crowdsec.FlushTimeout.
func (d *Daemon) stopFleet() {
	if d.fleetDone == nil {
		return
	}
	select {
	case <-d.fleetDone:
	case <-time.After(crowdsec.FlushTimeout + time.Second):
		d.log.Warn("crowdsec link did not stop in time")
	}
}

// pushed sends a ban the policy made to the LAPI (push on); it never
// waits. Callers hold d.mu.
func (d *Daemon) pushed(b enforce.BanRequest, alert crowdsec.Alert) {
	if d.fleet == nil || d.dryRun || !d.cfg.CrowdSec.Push || b.Origin != "" && b.Origin != store.OriginAuto {
		return
	}
	d.fleet.Push(alert)
}

// applyPulled bans the LAPI's new decisions in ctguard's own sets, for
// their remaining time, with purge (the allowlist refuses what it covers),
// and lifts the pulled bans the LAPI deleted. A ban ctguard made itself is
// never lifted by the LAPI.
func (d *Daemon) applyPulled(ctx context.Context, news, deleted []crowdsec.Decision) {
	var reqs []enforce.BanRequest
	var decs []crowdsec.Decision
	for _, dec := range news {
		ttl := min(dec.Remaining, enforce.MaxTTL).Truncate(time.Second)
		if ttl < enforce.MinTTL {
			continue // about to end at the LAPI
		}
		reqs = append(reqs, enforce.BanRequest{Prefix: dec.Prefix, TTL: ttl, Reason: "crowdsec: " + dec.Scenario,
			Evidence: fmt.Sprintf("CrowdSec LAPI decision %d: %s %s, origin %s, scenario %s", dec.ID, dec.Scope, dec.Value, dec.Origin, dec.Scenario),
			Origin:   store.OriginCrowdSec, ExactTTL: true})
		decs = append(decs, dec)
	}
	if len(reqs) > 0 {
		results, err := d.eng.BanMany(ctx, reqs)
		if err != nil {
			d.log.Error("crowdsec decisions not applied", "decisions", len(reqs), "err", err)
		}
		banned, refused, covered := 0, 0, 0
		d.mu.Lock()
		for i, r := range results {
			var refusal *allow.Refusal
			switch {
			case r.Err != nil && errors.As(r.Err, &refusal):
				refused++
				d.log.Warn("crowdsec decision refused: the allowlist covers it", "prefix", reqs[i].Prefix, "scenario", decs[i].Scenario, "why", r.Err)
			case r.Err != nil:
				refused++
				d.log.Warn("crowdsec decision refused", "prefix", reqs[i].Prefix, "scenario", decs[i].Scenario, "err", r.Err)
			case r.CoveredBy.IsValid():
				covered++
			default:
				banned++
				d.counters.BansByReason["crowdsec"]++
				d.log.Debug("crowdsec decision banned", "prefix", reqs[i].Prefix, "ttl", reqs[i].TTL, "scenario", decs[i].Scenario, "origin", decs[i].Origin,
					"purged", r.Ban.Purged, "sockets_closed", r.Ban.SocketsClosed)
			}
		}
		d.mu.Unlock()
		verb := "banned"
		if d.dryRun {
			verb = "would_ban"
		}
		d.log.Info("crowdsec decisions applied", verb, banned, "refused", refused, "covered", covered)
	}
	now := time.Now()
	for _, dec := range deleted {
		b, err := d.st.GetBan(dec.Prefix)
		if err != nil || b.Origin != store.OriginCrowdSec || !b.Active(now) {
			continue // not a pulled ban in force: ctguard's own stay
		}
		if _, err := d.eng.Unban(ctx, dec.Prefix); err != nil {
			d.log.Warn("crowdsec deletion not applied", "prefix", dec.Prefix, "err", err)
			continue
		}
		d.log.Info("crowdsec decision deleted at the LAPI: ban lifted", "prefix", dec.Prefix, "scenario", dec.Scenario)
	}
}

// fleetStatus is the link's state for status (nil when off).
func (d *Daemon) fleetStatus() *FleetStatus {
	if d.fleet == nil && d.fleetErr == "" {
		return nil
	}
	s := &FleetStatus{Error: d.fleetErr}
	if d.fleet != nil {
		st := d.fleet.Status()
		s.Link = &st
	}
	return s
}

// FleetStatus is the CrowdSec link in status.
type FleetStatus struct {
	Link  *crowdsec.Status `json:"link,omitempty"`
	Error string           `json:"error,omitempty"` // why the link did not start
}
