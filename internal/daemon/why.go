package daemon

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/human"
	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/snapshot"
	"github.com/ctguard/ctguard/internal/store"
)

// WhyReply explains everything the daemon knows about one address.
type WhyReply struct {
	Addr   netip.Addr   `json:"addr"`   // the address asked about (the prefix's first one for a CIDR)
	Target netip.Prefix `json:"target"` // what was asked about: an address (/32, /128) or a CIDR
	DryRun bool         `json:"dry_run"`
	// Offline: no daemon ran; the answer comes from one scan made for the
	// question and says what a cycle on it would do.
	Offline     bool            `json:"offline,omitempty"`
	Pressure    policy.Pressure `json:"pressure"`
	Threshold   float64         `json:"threshold"`
	Policy      policy.Config   `json:"policy"`
	Source      *Holding        `json:"source,omitempty"`
	Prefix      *Holding        `json:"prefix,omitempty"`
	Allowlisted []allow.Entry   `json:"allowlisted,omitempty"`
	// Sessions are open SSH sessions of this address: a ban leaves the SSH
	// ports open for it.
	Sessions []allow.Entry `json:"ssh_sessions,omitempty"`
	// Spared says why the last cycle did not ban it, when that cycle ran
	// under high or critical pressure and banned nothing.
	Spared  string      `json:"spared,omitempty"`
	Bans    []store.Ban `json:"bans,omitempty"` // records of this address and of prefixes holding it
	Events  []Event     `json:"events,omitempty"`
	CycleAt time.Time   `json:"cycle_at"`
	// Verdict is the answer in one line: banned (by whom, why, how much
	// longer), or why not.
	Verdict string `json:"verdict"`
}

// Holding is what one source or prefix held at the last scan, and its score.
type Holding struct {
	Key     netip.Prefix    `json:"key"`
	Counts  snapshot.Counts `json:"counts"`
	Members uint32          `json:"members,omitempty"`
	Score   float64         `json:"score"`
	// Growth is what it gained since the scan the growth rule compared
	// with (zero window: no such scan yet).
	Growth policy.Growth `json:"growth"`
	// Service is where its entries go: this host's address and port and,
	// when the host forwards them (DNAT), the target. Nil when they are
	// spread over several with none ahead; ServiceOthers: some go
	// elsewhere.
	Service       *snapshot.Service `json:"service,omitempty"`
	ServiceOthers bool              `json:"service_others,omitempty"`
}

// withService sets h's service from the snapshot's holder.
func (h *Holding) withService(snap *snapshot.Snapshot, from *snapshot.Holder) *Holding {
	svc, others, ok := snap.ServiceOf(from)
	if ok {
		h.Service = &svc
	}
	h.ServiceOthers = others
	return h
}

// Why gathers the evidence, thresholds, allowlist hits and ban history of a.
func (d *Daemon) Why(a netip.Addr) (WhyReply, error) {
	return d.WhyPrefix(netip.PrefixFrom(a, a.BitLen()))
}

// WhyPrefix explains an address or a CIDR: for a CIDR, the holding of the
// grouping prefix that contains it (or the sum of those inside it, for a
// wider one), every ban and decision that overlaps it.
func (d *Daemon) WhyPrefix(p netip.Prefix) (WhyReply, error) {
	d.mu.Lock()
	x := explainIn{target: p, dryRun: d.dryRun, pressure: d.result.Pressure, threshold: d.result.Threshold, policy: d.cfg.Policy,
		cycleAt: d.cycleAt, snap: d.snap, list: d.allowed, earlier: d.earlier, losing: d.losing}
	for _, e := range d.events {
		if e.Target.Overlaps(p.Masked()) {
			x.events = append(x.events, e)
		}
	}
	d.mu.Unlock()
	bans, err := d.st.Bans()
	if err != nil {
		return WhyReply{Addr: p.Addr(), Target: p.Masked()}, err
	}
	x.bans = bans
	return explain(x, time.Now()), nil
}

// explainIn is what an explanation is made of: the daemon's last cycle,
// or one scan made for the question (Offline).
type explainIn struct {
	target          netip.Prefix
	dryRun, offline bool
	pressure        policy.Pressure
	threshold       float64
	policy          policy.Config
	cycleAt         time.Time
	snap            *snapshot.Snapshot
	list            *allow.List
	earlier         *policy.Held
	losing          *Losing
	events          []Event
	bans            []store.Ban
}

func explain(x explainIn, now time.Time) WhyReply {
	p := x.target.Masked()
	a := p.Addr()
	r := WhyReply{Addr: a, Target: p, DryRun: x.dryRun, Offline: x.offline, Pressure: x.pressure, Threshold: x.threshold,
		Policy: x.policy, CycleAt: x.cycleAt}
	for _, e := range x.events {
		if e.Target.Overlaps(p) {
			r.Events = append(r.Events, e)
		}
	}
	if len(r.Events) > 50 {
		r.Events = r.Events[len(r.Events)-50:]
	}
	cfg := x.policy
	if snap := x.snap; snap != nil {
		in := policy.Input{Earlier: x.earlier}
		if p.IsSingleIP() {
			for i := range snap.Sources {
				if h := &snap.Sources[i]; h.Key.Addr() == a {
					r.Source = (&Holding{Key: h.Key, Counts: h.Counts, Score: cfg.Score(&h.Counts), Growth: in.GrowthOf(h)}).withService(snap, h)
					break
				}
			}
		}
		var sum *Holding
		for i := range snap.Prefixes {
			h := &snap.Prefixes[i]
			switch {
			case h.Key.Bits() <= p.Bits() && h.Key.Contains(a):
				r.Prefix = (&Holding{Key: h.Key, Counts: h.Counts, Members: h.Members, Score: cfg.Score(&h.Counts), Growth: in.GrowthOf(h)}).withService(snap, h)
			case h.Key.Bits() > p.Bits() && p.Contains(h.Key.Addr()):
				// A CIDR wider than the grouping: the sum of what is inside.
				if sum == nil {
					sum = &Holding{Key: p}
				}
				sum.Counts.Merge(&h.Counts)
				sum.Members += h.Members
			}
			if r.Prefix != nil {
				break
			}
		}
		if r.Prefix == nil && sum != nil {
			sum.Score = cfg.Score(&sum.Counts)
			r.Prefix = sum
		}
	}
	if x.losing != nil {
		for _, s := range x.losing.Spared {
			if s.Target.Overlaps(p) {
				r.Spared = s.Why
			}
		}
	}
	if x.list != nil {
		for _, e := range x.list.Entries() {
			if !e.Prefix.Overlaps(p) {
				continue
			}
			if e.Source == allow.SSH {
				r.Sessions = append(r.Sessions, e)
			} else {
				r.Allowlisted = append(r.Allowlisted, e)
			}
		}
	}
	for _, b := range x.bans {
		if b.Prefix.Overlaps(p) {
			r.Bans = append(r.Bans, b)
		}
	}
	r.Verdict = verdict(&r, now)
	return r
}

// Offline is what why needs when no daemon runs: one scan made for the
// question, the table's size, the stored bans, the allowlist and the
// configured policy.
type Offline struct {
	Snapshot   *snapshot.Snapshot
	Count, Max int
	Policy     policy.Config
	Bans       []store.Ban // every record, the history too
	Allowed    *allow.List
}

// ExplainOffline answers why from one scan: the policy decides on it as a
// cycle of the daemon would, without a growth history or a rate (so the
// growth rule and the time-to-full pressure do not apply), and the answer
// says what that cycle would ban.
func ExplainOffline(o Offline, target netip.Prefix) WhyReply {
	now := time.Now()
	var active []store.Active
	for _, b := range o.Bans {
		if b.Active(now) {
			active = append(active, store.Active{Prefix: b.Prefix, Expires: b.Expires, Scoped: b.Scoped, Manual: b.Origin == store.OriginManual})
		}
	}
	v4, v6 := snapshot.DefaultV4Bits, snapshot.DefaultV6Bits
	if o.Snapshot != nil {
		v4, v6 = o.Snapshot.Config.V4Bits, o.Snapshot.Config.V6Bits
	}
	idx := newBanIndex(active, v4, v6)
	history := map[netip.Prefix]policy.Offence{}
	for _, b := range o.Bans {
		history[b.Prefix] = policy.Offence{Count: b.Count, Last: b.Last}
	}
	in := policy.Input{Now: now, Snapshot: o.Snapshot, Count: o.Count, Max: o.Max,
		Banned: idx.covered, BannedIn: idx.hostsIn, BannedGroupsIn: idx.groupsIn,
		History: func(p netip.Prefix) policy.Offence { return history[p] }}
	if o.Allowed != nil {
		in.Allowed = func(p netip.Prefix) (string, bool) {
			e, ok := o.Allowed.Check(p)
			return e.String(), ok
		}
	}
	res := policy.Decide(in, o.Policy)
	x := explainIn{target: target, offline: true, pressure: res.Pressure, threshold: res.Threshold, policy: o.Policy,
		snap: o.Snapshot, list: o.Allowed, bans: o.Bans}
	if o.Snapshot != nil {
		x.cycleAt = o.Snapshot.Time
	}
	for _, dec := range res.Bans {
		x.events = append(x.events, Event{Time: now, Target: dec.Target, Action: "would-ban", Detail: "a cycle on this scan", Decision: dec})
	}
	if len(res.Spared) > 0 {
		x.losing = &Losing{Spared: res.Spared}
	}
	return explain(x, now)
}

func pluralBans(n int) string {
	if n == 1 {
		return "1 ban"
	}
	return fmt.Sprintf("%d bans", n)
}

// verdict is why's last line: banned, or why not.
func verdict(r *WhyReply, now time.Time) string {
	banned := "BANNED"
	if r.DryRun {
		banned = "would be banned (dry run)"
	}
	inside := 0
	for _, b := range r.Bans {
		if b.Active(now) && r.Target.IsValid() && b.Prefix.Bits() > r.Target.Bits() {
			inside++ // a ban of a part of the CIDR asked about
			continue
		}
		if b.Active(now) {
			who := "by the policy"
			switch b.Origin {
			case store.OriginManual:
				who = "by an operator"
			case store.OriginAdopted:
				who = "adopted from the kernel"
			case store.OriginCrowdSec:
				who = "from CrowdSec's Local API"
			}
			return fmt.Sprintf("%s: %s %s (%s), for %s more", banned, b.Prefix, who, b.Reason, human.Duration(b.Expires.Sub(now)))
		}
	}
	if inside > 0 {
		return fmt.Sprintf("partly banned: %s inside %s, not the whole", pluralBans(inside), r.Target)
	}
	if r.Offline {
		for _, e := range r.Events {
			if e.Action == "would-ban" && e.Target.Contains(r.Target.Addr()) && e.Target.Bits() <= r.Target.Bits() {
				d := e.Decision
				return fmt.Sprintf("would be banned: a cycle on this scan bans %s (%s, score %.1f at %s pressure, for %s)",
					d.Target, d.Reason, d.Score, d.Pressure, human.Duration(d.TTL))
			}
		}
	}
	if len(r.Allowlisted) > 0 {
		if r.Target.IsValid() && !r.Target.IsSingleIP() {
			return "never banned as a whole: it holds allowlisted " + r.Allowlisted[0].String()
		}
		return "never banned: allowlisted (" + r.Allowlisted[0].String() + ")"
	}
	if r.Target.IsValid() && !r.Target.IsSingleIP() {
		if r.Prefix == nil {
			return "not banned: nothing inside it held entries at the last scan"
		}
		sources := "sources"
		if r.Prefix.Members == 1 {
			sources = "source"
		}
		return fmt.Sprintf("not banned: %s holds %d entries from %d %s, score %.1f (a prefix is banned when several of its members are, or when it scores %.0f x the threshold %.0f with %d scoring members)",
			r.Prefix.Key, r.Prefix.Counts.Entries, r.Prefix.Members, sources, r.Prefix.Score, r.Policy.PrefixFactor, r.Threshold, r.Policy.PrefixMinSources)
	}
	if r.CycleAt.IsZero() {
		return "not banned: no scan yet"
	}
	if r.Spared != "" {
		return "not banned: " + r.Spared
	}
	if r.Source == nil {
		return "not banned: it held no entries (or a single one) at the last scan"
	}
	c := r.Source.Counts
	switch {
	case c.Entries < r.Policy.MinEntries:
		return fmt.Sprintf("not banned: it holds %d entries, under min_entries %d", c.Entries, r.Policy.MinEntries)
	case r.Source.Score < r.Threshold:
		why := fmt.Sprintf("not banned: score %.1f under the threshold %.0f at %s pressure", r.Source.Score, r.Threshold, r.Pressure)
		if r.Prefix != nil && r.Prefix.Members > 1 {
			why += fmt.Sprintf("; its prefix %s (%d sources, score %.1f) did not reach a prefix rule", r.Prefix.Key, r.Prefix.Members, r.Prefix.Score)
		}
		return why
	}
	return fmt.Sprintf("due to be banned: score %.1f reaches the threshold %.0f (the next cycle bans it unless a cap or the allowlist stops it)", r.Source.Score, r.Threshold)
}
