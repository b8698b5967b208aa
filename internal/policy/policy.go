// Package policy decides whom to ban. It is a pure function of a snapshot
// of the table, the recent history, the configuration, the allowlist, the
// active bans and the time: no I/O, no clock, no randomness, so every
// decision can be replayed and table-tested.
//
// What it weighs: entries the kernel can never evict early (idle ASSURED
// ones, and fresh ESTABLISHED ones no application socket holds) count fully;
// half-open ones (evictable, but a SYN flood's) count a fifth; entries that
// carry live traffic count almost nothing, so a NAT gateway full of real users
// is never mistaken for a bot. Thresholds tighten as the table fills.
//
// Live traffic is no shield once the table is heading for full: from high
// pressure on, a source that grew by many ESTABLISHED entries within the
// growth window, most of what it holds, is banned whatever its entries
// carry (the growth rule). A carrier NAT that holds more than any bot is
// spared by the same rule, because most of what it holds is older than the
// window.
package policy

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/ctguard/ctguard/internal/snapshot"
)

// Pressure is how close the table is to failing.
type Pressure int

// Pressure levels.
const (
	Calm Pressure = iota
	Elevated
	High
	Critical
	NumPressures
)

var pressureNames = [NumPressures]string{"calm", "elevated", "high", "critical"}

func (p Pressure) String() string {
	if p >= 0 && p < NumPressures {
		return pressureNames[p]
	}
	return "unknown"
}

// MarshalText makes pressures readable in JSON and logs.
func (p Pressure) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads a pressure name back.
func (p *Pressure) UnmarshalText(b []byte) error {
	for i, n := range pressureNames {
		if string(b) == n {
			*p = Pressure(i)
			return nil
		}
	}
	return fmt.Errorf("unknown pressure %q", b)
}

// Weights say how much one entry of each class counts toward a score.
type Weights struct {
	Idle float64 `toml:"idle"` // idle ESTABLISHED (nearly all ASSURED: unevictable) with no socket known
	// IdleServed is an idle entry with an application socket behind it: the
	// application holds it and will time it out (quiet websockets, pools).
	IdleServed float64 `toml:"idle_served"`
	Orphan     float64 `toml:"orphan"`    // active ESTABLISHED with no socket behind it
	HalfOpen   float64 `toml:"half_open"` // SYN_RECV, unreplied: evictable
	Stalled    float64 `toml:"stalled"`
	Active     float64 `toml:"active"` // live traffic
	Closing    float64 `toml:"closing"`
	Other      float64 `toml:"other"`
}

// Config is the policy's part of the configuration. Zero values are not
// defaults: start from Default().
type Config struct {
	// Pressure: fill ratios of the unevictable part of the table (entries
	// minus half-open ones, which early_drop can evict) and forecast times
	// to full, each level's bound.
	ElevatedFill float64       `toml:"elevated_fill"`
	HighFill     float64       `toml:"high_fill"`
	CriticalFill float64       `toml:"critical_fill"`
	ElevatedETA  time.Duration `toml:"elevated_eta"`
	HighETA      time.Duration `toml:"high_eta"`
	CriticalETA  time.Duration `toml:"critical_eta"`

	Weights Weights `toml:"weights"`
	// Threshold is the per-source score that gets a ban, per pressure
	// level (calm, elevated, high, critical).
	Threshold [NumPressures]float64 `toml:"threshold"`
	// MinEntries: a source holding fewer entries is never banned.
	MinEntries uint32 `toml:"min_entries"`
	// OrphanMinShare: a holder's active orphans weigh as orphans only when
	// orphans are at least this share of its ESTABLISHED entries (idle and
	// active); below it they are measurement noise (a socket dump under heavy
	// churn misses a few sockets) and weigh as active entries.
	OrphanMinShare float64 `toml:"orphan_min_share"`

	// Prefix aggregation. A prefix is banned when PrefixBannedMembers of
	// its sources are banned, or when its members together score at least
	// PrefixFactor times the source threshold with at least
	// PrefixMinSources members scoring PrefixMemberScore or more each.
	PrefixBannedMembers int     `toml:"prefix_banned_members"`
	PrefixFactor        float64 `toml:"prefix_factor"`
	PrefixMinSources    int     `toml:"prefix_min_sources"`
	PrefixMemberScore   float64 `toml:"prefix_member_score"`

	// Wide aggregation: a wider block (an IPv6 /48, one end site) is banned
	// when WideBannedNets of its grouping prefixes (/64s) hold bans, now
	// or in this cycle. Bits 0 turns the level off for that family.
	WideV4Bits     int `toml:"wide_v4_bits"`
	WideV6Bits     int `toml:"wide_v6_bits"`
	WideBannedNets int `toml:"wide_banned_nets"`

	// Ban lengths: BaseTTL for a first offence, times Escalation for each
	// earlier one within DecayAfter, capped at MaxTTL.
	BaseTTL    time.Duration `toml:"base_ttl"`
	MaxTTL     time.Duration `toml:"max_ttl"`
	Escalation float64       `toml:"escalation"`
	DecayAfter time.Duration `toml:"decay_after"`

	// Blast-radius breaker: no cycle bans more than MaxBansPerCycle, nor
	// more than MaxBanShare of the sources holding inbound entries (but
	// always allows BreakerFloor).
	MaxBansPerCycle int     `toml:"max_bans_per_cycle"`
	MaxBanShare     float64 `toml:"max_ban_share"`
	BreakerFloor    int     `toml:"breaker_floor"`

	// Emergency valve: above ValveHigh fill (of the whole table, with the
	// unevictable part above CriticalFill), free entries of the top holders
	// down to ValveTarget: idle ones first, then those of growing sources.
	ValveHigh   float64 `toml:"valve_high"`
	ValveTarget float64 `toml:"valve_target"`

	// Growth rule: from GrowthPressure on, a source that gained at least
	// GrowthMinGain ESTABLISHED entries within the growth window, and at
	// least GrowthYoung of what it holds, is banned whatever its entries
	// carry; a grouping prefix when it gained PrefixFactor times as much
	// over at least PrefixMinSources members that each gained
	// GrowthMinGain/PrefixMinSources, none of them half of it. GrowthWindow
	// is how far back the daemon compares.
	GrowthPressure Pressure      `toml:"growth_pressure"`
	GrowthWindow   time.Duration `toml:"growth_window"`
	GrowthMinGain  int           `toml:"growth_min_gain"`
	GrowthYoung    float64       `toml:"growth_young"`
}

// Default returns the built-in policy: safe on a typical server.
func Default() Config {
	return Config{
		ElevatedFill: 0.50, HighFill: 0.75, CriticalFill: 0.90,
		ElevatedETA: 6 * time.Hour, HighETA: 30 * time.Minute, CriticalETA: 5 * time.Minute,
		Weights: Weights{Idle: 1, IdleServed: 0.25, Orphan: 1, HalfOpen: 0.2, Stalled: 0.1, Active: 0.01, Closing: 0.02, Other: 0.02},
		// The incident's bots hold ~300 unevictable entries each; a NAT gateway
		// with 60 live users scores 0.6.
		Threshold:           [NumPressures]float64{100, 60, 30, 15},
		MinEntries:          10,
		OrphanMinShare:      0.25,
		PrefixBannedMembers: 3,
		PrefixFactor:        3,
		PrefixMinSources:    4,
		PrefixMemberScore:   5,
		// An IPv6 /48 is one site; a bot herd that rotates through its /64s
		// would otherwise need one ban per /64. No IPv4 level by default: a
		// /16 is many unrelated customers.
		WideV6Bits:      48,
		WideBannedNets:  8,
		BaseTTL:         15 * time.Minute,
		MaxTTL:          24 * time.Hour,
		Escalation:      4,
		DecayAfter:      24 * time.Hour,
		MaxBansPerCycle: 1000,
		MaxBanShare:     0.5,
		BreakerFloor:    50,
		ValveHigh:       0.95,
		ValveTarget:     0.90,
		// A bot holds ~300 connections and opens them within seconds; a
		// carrier NAT with 1,000 users gains a few per second on top of
		// what it has held for minutes.
		GrowthPressure: High,
		GrowthWindow:   15 * time.Second,
		GrowthMinGain:  150,
		GrowthYoung:    0.5,
	}
}

// MaxTTL is the longest ban the enforcer takes (enforce.MaxTTL): a config
// that could ask for more would have every such ban refused.
const MaxTTL = 30 * 24 * time.Hour

// Validate reports the first bad value, naming its key.
func (c *Config) Validate() error {
	var errs []error
	ratio := func(k string, v float64) error {
		if !(v > 0 && v <= 1) {
			return fmt.Errorf("%s = %v: want a ratio in (0, 1]", k, v)
		}
		return nil
	}
	for _, r := range []struct {
		k string
		v float64
	}{{"elevated_fill", c.ElevatedFill}, {"high_fill", c.HighFill}, {"critical_fill", c.CriticalFill}, {"orphan_min_share", c.OrphanMinShare},
		{"max_ban_share", c.MaxBanShare}, {"valve_high", c.ValveHigh}, {"valve_target", c.ValveTarget}} {
		if err := ratio(r.k, r.v); err != nil {
			errs = append(errs, err)
		}
	}
	if !(c.ElevatedFill <= c.HighFill && c.HighFill <= c.CriticalFill) {
		errs = append(errs, fmt.Errorf("elevated_fill %v, high_fill %v, critical_fill %v: want them rising", c.ElevatedFill, c.HighFill, c.CriticalFill))
	}
	if !(c.ElevatedETA >= c.HighETA && c.HighETA >= c.CriticalETA && c.CriticalETA >= 0) {
		errs = append(errs, fmt.Errorf("elevated_eta %v, high_eta %v, critical_eta %v: want them falling, not negative", c.ElevatedETA, c.HighETA, c.CriticalETA))
	}
	if c.ValveTarget >= c.ValveHigh {
		errs = append(errs, fmt.Errorf("valve_target %v must be below valve_high %v", c.ValveTarget, c.ValveHigh))
	}
	rises := false
	for i, t := range c.Threshold {
		if !(t > 0) || math.IsInf(t, 0) {
			errs = append(errs, fmt.Errorf("threshold[%d] (%s) = %v: want a finite number > 0", i, Pressure(i), t))
		}
		rises = rises || i > 0 && t > c.Threshold[i-1]
	}
	if rises {
		errs = append(errs, fmt.Errorf("threshold = %v: want it to tighten (not rise) with pressure", c.Threshold))
	}
	w := c.Weights
	for _, x := range []struct {
		k string
		v float64
	}{{"weights.idle", w.Idle}, {"weights.idle_served", w.IdleServed}, {"weights.orphan", w.Orphan}, {"weights.half_open", w.HalfOpen}, {"weights.stalled", w.Stalled},
		{"weights.active", w.Active}, {"weights.closing", w.Closing}, {"weights.other", w.Other},
		{"prefix_factor", c.PrefixFactor}, {"prefix_member_score", c.PrefixMemberScore}} {
		if x.v < 0 || math.IsNaN(x.v) || math.IsInf(x.v, 0) {
			errs = append(errs, fmt.Errorf("%s = %v: want a finite number >= 0", x.k, x.v))
		}
	}
	if c.BaseTTL < time.Second || c.MaxTTL < c.BaseTTL || c.MaxTTL > MaxTTL {
		errs = append(errs, fmt.Errorf("base_ttl %v, max_ttl %v: want base_ttl >= 1s, max_ttl >= base_ttl and max_ttl <= %v (the longest ban the enforcer takes)",
			c.BaseTTL, c.MaxTTL, MaxTTL))
	}
	if !(c.Escalation >= 1) || math.IsInf(c.Escalation, 0) {
		errs = append(errs, fmt.Errorf("escalation = %v: want a finite number >= 1", c.Escalation))
	}
	if c.DecayAfter < 0 {
		errs = append(errs, fmt.Errorf("decay_after = %v: want >= 0", c.DecayAfter))
	}
	if c.WideV4Bits < 0 || c.WideV4Bits > 32 {
		errs = append(errs, fmt.Errorf("wide_v4_bits = %d: want a prefix length 0-32 (0: off)", c.WideV4Bits))
	}
	if c.WideV6Bits < 0 || c.WideV6Bits > 128 {
		errs = append(errs, fmt.Errorf("wide_v6_bits = %d: want a prefix length 0-128 (0: off)", c.WideV6Bits))
	}
	if c.WideBannedNets < 0 {
		errs = append(errs, fmt.Errorf("wide_banned_nets = %d: want a count >= 0 (0: off)", c.WideBannedNets))
	}
	if c.GrowthPressure < Elevated || c.GrowthPressure >= NumPressures {
		errs = append(errs, fmt.Errorf("growth_pressure = %q: want elevated, high or critical", c.GrowthPressure))
	}
	if c.GrowthWindow < time.Second || c.GrowthWindow > time.Hour {
		errs = append(errs, fmt.Errorf("growth_window = %v: want 1s to 1h", c.GrowthWindow))
	}
	if c.GrowthMinGain < 1 {
		errs = append(errs, fmt.Errorf("growth_min_gain = %d: want >= 1", c.GrowthMinGain))
	}
	if !(c.GrowthYoung > 0 && c.GrowthYoung <= 1) {
		errs = append(errs, fmt.Errorf("growth_young = %v: want a ratio in (0, 1]", c.GrowthYoung))
	}
	if c.MaxBansPerCycle < 1 || c.BreakerFloor < 0 || c.PrefixBannedMembers < 0 || c.PrefixMinSources < 0 {
		errs = append(errs, fmt.Errorf("max_bans_per_cycle %d, breaker_floor %d, prefix_banned_members %d, prefix_min_sources %d: want counts (max_bans_per_cycle >= 1)",
			c.MaxBansPerCycle, c.BreakerFloor, c.PrefixBannedMembers, c.PrefixMinSources))
	}
	return errors.Join(errs...)
}

// Score weighs what one holder holds.
func (c *Config) Score(h *snapshot.Counts) float64 {
	w := c.Weights
	orphanActive := min(h.OrphanActive, h.Active)
	if est := h.Idle + h.Active; est > 0 && float64(max(h.Orphan, h.OrphanActive)) < c.OrphanMinShare*float64(est) {
		orphanActive = 0 // a few stray orphans among many served entries: noise
	}
	served := min(h.ServedIdle, h.Idle)
	return w.Idle*float64(h.Idle-served) + w.IdleServed*float64(served) + w.Orphan*float64(orphanActive) + w.Active*float64(h.Active-orphanActive) +
		w.HalfOpen*float64(h.HalfOpen) + w.Stalled*float64(h.Stalled) + w.Closing*float64(h.Closing) + w.Other*float64(h.Other)
}

// Offence is what the store remembers of a target's earlier bans.
type Offence struct {
	Count int       // times banned before
	Last  time.Time // latest ban
}

// Input is everything a decision depends on.
type Input struct {
	Now      time.Time
	Snapshot *snapshot.Snapshot
	// Count and Max are the table's size and limit.
	Count, Max int
	// RatePerSec is the table's growth; RateOK false when unknown.
	RatePerSec float64
	RateOK     bool
	// Allowed returns the allowlist entry that covers (or lies inside) a
	// prefix, if any.
	Allowed func(netip.Prefix) (string, bool)
	// Banned reports whether an active ban already covers the prefix.
	Banned func(netip.Prefix) bool
	// BannedIn counts the active bans of single sources inside a prefix.
	BannedIn func(netip.Prefix) int
	// BannedGroupsIn lists the grouping prefixes (the snapshot's /24s or
	// /64s) inside a wider prefix that hold an active ban.
	BannedGroupsIn func(netip.Prefix) []netip.Prefix
	// History returns a target's earlier offences.
	History func(netip.Prefix) Offence
	// Earlier is what sources and grouping prefixes held at an earlier
	// scan, for the growth rule; nil when there is none yet.
	Earlier *Held
}

// Held is the ESTABLISHED entries (idle, active or stalled) each source and
// grouping prefix held at one scan. Keys missing from Entries held fewer
// than the daemon records (a handful): they count as zero.
type Held struct {
	Since   time.Duration // how long before Input.Now
	Entries map[netip.Prefix]uint32
}

// Established is what the growth rule counts of a holder: its ESTABLISHED
// entries. Half-open ones are evicted by the kernel when the table is full,
// closing ones expire within minutes.
func Established(c *snapshot.Counts) uint32 { return c.Idle + c.Active + c.Stalled }

// Growth is what a holder gained since the earlier scan.
type Growth struct {
	Gain   uint32        `json:"gain"`   // ESTABLISHED entries gained
	Held   uint32        `json:"held"`   // ESTABLISHED entries held now
	Window time.Duration `json:"window"` // over this long
}

// Young is the share of what it holds that is new.
func (g Growth) Young() float64 {
	if g.Held == 0 {
		return 0
	}
	return float64(g.Gain) / float64(g.Held)
}

// GrowthOf returns what h gained since the earlier scan (zero without one).
func (in *Input) GrowthOf(h *snapshot.Holder) Growth {
	g := Growth{Held: Established(&h.Counts)}
	if in.Earlier == nil {
		return g
	}
	g.Window = in.Earlier.Since
	if was := in.Earlier.Entries[h.Key]; g.Held > was {
		g.Gain = g.Held - was
	}
	return g
}

// growing reports whether g meets the growth rule's bar (gain at least
// minGain over the growth window, and the young share).
func (c *Config) growing(g Growth, minGain int) bool {
	return g.Window > 0 && g.Gain >= c.gainBar(minGain, g.Window) && g.Young() >= c.GrowthYoung
}

// gainBar is what a gain must reach over window for a bar of minGain per
// growth window. A comparison over a longer span (the daemon's scans were
// slower than the window, as on a starved host) keeps the rate: the bar
// grows with the span, so a slow scan never turns steady growth into a
// ban. Spans up to the window keep the bar as it is.
func (c *Config) gainBar(minGain int, window time.Duration) uint32 {
	if c.GrowthWindow <= 0 || window <= c.GrowthWindow {
		return uint32(max(0, minGain))
	}
	return uint32(math.Ceil(float64(minGain) * float64(window) / float64(c.GrowthWindow)))
}

// Decision is one ban with its evidence.
type Decision struct {
	Target    netip.Prefix    `json:"target"`
	TTL       time.Duration   `json:"ttl"`
	Reason    string          `json:"reason"`
	Score     float64         `json:"score"`
	Threshold float64         `json:"threshold"`
	Pressure  Pressure        `json:"pressure"`
	Counts    snapshot.Counts `json:"counts"`
	Members   uint32          `json:"members,omitempty"`
	Offences  int             `json:"previous_bans"`
	// Growth is what the target gained within the growth window (set for
	// the growth rule's decisions).
	Growth *Growth `json:"growth,omitempty"`
	// Instead are the member bans of this cycle that this prefix ban
	// replaces: the ones to make when the prefix is refused (the allowlist
	// changed between the decision and the ban).
	Instead []Decision `json:"instead,omitempty"`
}

// Reasons a decision gives.
const (
	ReasonSource        = "source-score"   // one source holds too much
	ReasonPrefixMembers = "prefix-members" // several members of a prefix are banned
	ReasonPrefixScore   = "prefix-score"   // a prefix jointly holds too much
	ReasonWidePrefix    = "wide-prefix"    // several grouping prefixes of a wider block are banned
	ReasonGrowth        = "growth"         // it filled the table fast under pressure, whatever its entries carry
	ReasonPrefixGrowth  = "prefix-growth"  // a prefix's members filled it fast under pressure
)

// Skip is a candidate that was not banned, and why.
type Skip struct {
	Target netip.Prefix `json:"target"`
	Score  float64      `json:"score"`
	Why    string       `json:"why"`
}

// Valve asks the enforcer to delete entries right now.
type Valve struct {
	// Free is how many ESTABLISHED entries to delete from Holders (never
	// allowlisted space): idle ones first, most idle first; then those of
	// Growers; then the others'. A live connection whose entry is deleted
	// gets a new one with its next packet (conntrack picks up established
	// TCP), so the cost of a wrong pick is one entry, not a connection.
	Free    int            `json:"free"`
	Holders []netip.Prefix `json:"holders"`
	Growers []netip.Prefix `json:"growers,omitempty"`
}

// Breaker records a cycle that wanted more bans than the cap allows.
type Breaker struct {
	Wanted int `json:"wanted"`
	Cap    int `json:"cap"`
}

// Result is a cycle's decisions.
type Result struct {
	Pressure        Pressure   `json:"pressure"`
	UnevictableFill float64    `json:"unevictable_fill"`
	Threshold       float64    `json:"threshold"`
	Bans            []Decision `json:"bans"`
	Skips           []Skip     `json:"skips,omitempty"`
	Breaker         *Breaker   `json:"breaker,omitempty"`
	Valve           *Valve     `json:"valve,omitempty"`
	// Spared lists the top holders and why none was banned, when the
	// pressure is high or critical and the cycle bans nothing: a guard
	// that is losing says so.
	Spared []Spare `json:"spared,omitempty"`
}

// Spare is a top holder that was not banned in a cycle, with the reason.
type Spare struct {
	Target netip.Prefix    `json:"target"`
	Score  float64         `json:"score"`
	Counts snapshot.Counts `json:"counts"`
	Growth Growth          `json:"growth"`
	Why    string          `json:"why"`
}

// PressureOf classifies the table's state. Half-open entries are left out
// of the fill: the kernel evicts them itself when the table is full, so a
// table full of SYN-flood entries still takes new connections.
func (c *Config) PressureOf(in *Input) (Pressure, float64) {
	if in.Max <= 0 {
		return Calm, 0
	}
	unevictable := in.Count
	if in.Snapshot != nil {
		unevictable -= in.Snapshot.Classes[snapshot.HalfOpen]
	}
	fill := math.Max(0, float64(unevictable)/float64(in.Max))
	p := Calm
	bump := func(level Pressure, fillBound float64, eta time.Duration) {
		if fill >= fillBound {
			p = max(p, level)
		}
		if in.RateOK && in.RatePerSec > 0 {
			left := time.Duration(float64(in.Max-unevictable) / in.RatePerSec * float64(time.Second))
			if left <= eta {
				p = max(p, level)
			}
		}
	}
	bump(Elevated, c.ElevatedFill, c.ElevatedETA)
	bump(High, c.HighFill, c.HighETA)
	bump(Critical, c.CriticalFill, c.CriticalETA)
	return p, fill
}

// TTL is the ban length for a target banned offences times before.
func (c *Config) TTL(previous int) time.Duration {
	d := float64(c.BaseTTL) * math.Pow(c.Escalation, float64(previous))
	if d > float64(c.MaxTTL) || math.IsInf(d, 0) {
		return c.MaxTTL
	}
	return time.Duration(d)
}

func (c *Config) offences(in *Input, p netip.Prefix) int {
	if in.History == nil {
		return 0
	}
	o := in.History(p)
	if o.Count == 0 || (c.DecayAfter > 0 && in.Now.Sub(o.Last) > c.DecayAfter) {
		return 0
	}
	return o.Count
}

// Decide returns this cycle's decisions.
func Decide(in Input, c Config) Result {
	p, fill := c.PressureOf(&in)
	r := Result{Pressure: p, UnevictableFill: math.Round(fill*1e6) / 1e6, Threshold: c.Threshold[p]}
	snap := in.Snapshot
	if snap == nil {
		return r
	}
	allowed := func(t netip.Prefix) (string, bool) {
		if in.Allowed == nil {
			return "", false
		}
		return in.Allowed(t)
	}
	banned := func(t netip.Prefix) bool { return in.Banned != nil && in.Banned(t) }

	var cands []Decision
	newInPrefix := map[netip.Prefix]int{}
	bits := func(a netip.Addr) int {
		if a.Is4() {
			return snap.Config.V4Bits
		}
		return snap.Config.V6Bits
	}
	growthOn := p >= c.GrowthPressure && in.Earlier != nil
	growingIn := map[netip.Prefix]int{}  // grouping prefix -> members that grew noticeably
	topGain := map[netip.Prefix]uint32{} // grouping prefix -> its biggest member's gain
	memberBar := uint32(1)
	if in.Earlier != nil {
		memberBar = max(1, c.gainBar(c.GrowthMinGain/max(1, c.PrefixMinSources), in.Earlier.Since))
	}
	for i := range snap.Sources {
		h := &snap.Sources[i]
		s := c.Score(&h.Counts)
		reason := ReasonSource
		var growth *Growth
		if g := in.GrowthOf(h); growthOn && g.Gain > 0 {
			pfx, _ := h.Key.Addr().Prefix(bits(h.Key.Addr()))
			if g.Gain >= memberBar {
				growingIn[pfx]++
			}
			topGain[pfx] = max(topGain[pfx], g.Gain)
			if s < r.Threshold && c.growing(g, c.GrowthMinGain) {
				reason, growth = ReasonGrowth, &g
			}
		}
		if (s < r.Threshold && growth == nil) || h.Entries < c.MinEntries {
			continue
		}
		if banned(h.Key) {
			continue // already banned; its entries are being purged
		}
		if e, ok := allowed(h.Key); ok {
			r.Skips = append(r.Skips, Skip{Target: h.Key, Score: s, Why: "allowlisted: " + e})
			continue
		}
		pfx, _ := h.Key.Addr().Prefix(bits(h.Key.Addr()))
		if banned(pfx) {
			continue
		}
		off := c.offences(&in, h.Key)
		cands = append(cands, Decision{Target: h.Key, TTL: c.TTL(off), Reason: reason, Score: round(s),
			Threshold: r.Threshold, Pressure: p, Counts: h.Counts, Offences: off, Growth: growth})
		newInPrefix[pfx]++
	}

	// Prefixes: rotating sources (several members banned, now or before)
	// and distributed holders (many members, each under the threshold).
	for i := range snap.Prefixes {
		h := &snap.Prefixes[i]
		if banned(h.Key) || h.Key.IsSingleIP() {
			continue
		}
		reason := ""
		members := 0
		if in.BannedIn != nil {
			members = in.BannedIn(h.Key)
		}
		members += newInPrefix[h.Key]
		s := c.Score(&h.Counts)
		var growth *Growth
		if c.PrefixBannedMembers > 0 && members >= c.PrefixBannedMembers {
			reason = ReasonPrefixMembers
		} else if c.PrefixFactor > 0 && s >= c.PrefixFactor*r.Threshold && c.PrefixMinSources > 0 &&
			scoringMembers(snap, h.Key, &c) >= c.PrefixMinSources {
			reason = ReasonPrefixScore
		} else if g := in.GrowthOf(h); growthOn && c.PrefixMinSources > 0 && growingIn[h.Key] >= c.PrefixMinSources &&
			c.growing(g, int(math.Ceil(c.PrefixFactor*float64(c.GrowthMinGain)))) && 2*topGain[h.Key] <= g.Gain {
			// Distributed growth only: when one member made most of it,
			// the source rule judges that member (a carrier NAT among a
			// few quiet neighbours is not a spread-out herd).
			reason, growth = ReasonPrefixGrowth, &g
		}
		if reason == "" {
			continue
		}
		if e, ok := allowed(h.Key); ok {
			r.Skips = append(r.Skips, Skip{Target: h.Key, Score: round(s), Why: "prefix covers allowlisted " + e})
			continue
		}
		off := c.offences(&in, h.Key)
		cands = append(cands, Decision{Target: h.Key, TTL: c.TTL(off), Reason: reason, Score: round(s),
			Threshold: r.Threshold, Pressure: p, Counts: h.Counts, Members: h.Members, Offences: off, Growth: growth})
	}
	cands = append(cands, c.wide(&in, snap, cands, bits, allowed, banned, p, r.Threshold, &r.Skips)...)
	// A prefix ban replaces the bans inside it made in the same cycle; the
	// widest covering one keeps them in case it is refused.
	outer := func(d Decision) int {
		o := -1
		for i := range cands {
			p := cands[i].Target
			if !p.IsSingleIP() && p.Bits() < d.Target.Bits() && p.Contains(d.Target.Addr()) && (o < 0 || p.Bits() < cands[o].Target.Bits()) {
				o = i
			}
		}
		return o
	}
	drop := make([]bool, len(cands))
	for j, d := range cands {
		if o := outer(d); o >= 0 {
			d.Instead = nil
			cands[o].Instead = append(cands[o].Instead, d)
			drop[j] = true
		}
	}
	kept := cands[:0:0]
	for j, d := range cands {
		if !drop[j] {
			kept = append(kept, d)
		}
	}
	cands = kept

	// Breaker: highest scores first, then the cap.
	slices.SortStableFunc(cands, func(a, b Decision) int {
		if c := cmp.Compare(b.Score, a.Score); c != 0 {
			return c
		}
		return a.Target.Addr().Compare(b.Target.Addr())
	})
	limit := c.MaxBansPerCycle
	if share := int(c.MaxBanShare * float64(max(len(snap.Sources), snap.NumSources))); share < limit {
		limit = max(share, c.BreakerFloor)
	}
	limit = min(limit, c.MaxBansPerCycle)
	if len(cands) > limit {
		r.Breaker = &Breaker{Wanted: len(cands), Cap: limit}
		for _, d := range cands[limit:] {
			r.Skips = append(r.Skips, Skip{Target: d.Target, Score: d.Score, Why: fmt.Sprintf("blast-radius breaker: %d bans wanted, cap %d", len(cands), limit)})
		}
		cands = cands[:limit]
	}
	r.Bans = cands

	// Valve: the table is nearly full of entries the kernel cannot evict.
	if in.Max > 0 && float64(in.Count) >= c.ValveHigh*float64(in.Max) && fill >= c.CriticalFill {
		r.Valve = c.valve(&in, snap, allowed)
	}
	if p >= High && len(r.Bans) == 0 {
		r.Spared = c.spared(&in, snap, r.Threshold, growthOn, allowed, banned)
	}
	return r
}

// maxValveHolders bounds the holders one valve run works on.
const maxValveHolders = 64

// valve picks whose entries the valve frees: the holders of the most idle
// entries, then the sources that grew the most, then the biggest holders,
// never allowlisted space.
func (c *Config) valve(in *Input, snap *snapshot.Snapshot, allowed func(netip.Prefix) (string, bool)) *Valve {
	v := &Valve{Free: in.Count - int(c.ValveTarget*float64(in.Max))}
	if v.Free <= 0 {
		return nil
	}
	seen := map[netip.Prefix]bool{}
	take := func(h *snapshot.Holder) bool {
		if seen[h.Key] || len(v.Holders) >= maxValveHolders || Established(&h.Counts) == 0 {
			return false
		}
		if _, ok := allowed(h.Key); ok {
			return false
		}
		seen[h.Key] = true
		v.Holders = append(v.Holders, h.Key)
		return true
	}
	holders := slices.Clone(snap.Sources)
	snapshot.SortBy(holders, snapshot.ByIdle)
	for i := range holders {
		if holders[i].Idle == 0 || len(v.Holders) >= maxValveHolders/2 {
			break
		}
		take(&holders[i])
	}
	if in.Earlier != nil {
		slices.SortStableFunc(holders, func(a, b snapshot.Holder) int {
			return cmp.Compare(in.GrowthOf(&b).Gain, in.GrowthOf(&a).Gain)
		})
		for i := range holders {
			if in.GrowthOf(&holders[i]).Gain == 0 || len(v.Growers) >= maxValveHolders/4 {
				break
			}
			if take(&holders[i]) {
				v.Growers = append(v.Growers, holders[i].Key)
			}
		}
	}
	for i := range snap.Sources { // by entries held
		take(&snap.Sources[i])
	}
	if len(v.Holders) == 0 {
		return nil
	}
	return v
}

// maxSpared is how many top holders a losing cycle explains.
const maxSpared = 5

// spared explains why the biggest holders were not banned.
func (c *Config) spared(in *Input, snap *snapshot.Snapshot, threshold float64, growthOn bool,
	allowed func(netip.Prefix) (string, bool), banned func(netip.Prefix) bool) []Spare {
	var out []Spare
	for i := range snap.Sources {
		if len(out) >= maxSpared {
			break
		}
		h := &snap.Sources[i]
		s := round(c.Score(&h.Counts))
		g := in.GrowthOf(h)
		sp := Spare{Target: h.Key, Score: s, Counts: h.Counts, Growth: g}
		switch e, ok := allowed(h.Key); {
		case ok:
			sp.Why = "allowlisted: " + e
		case banned(h.Key):
			sp.Why = "already banned"
		case h.Entries < c.MinEntries:
			sp.Why = fmt.Sprintf("holds %d entries, under min_entries %d", h.Entries, c.MinEntries)
		default:
			sp.Why = fmt.Sprintf("score %.2f under threshold %.0f", s, threshold)
			if h.Active > 0 {
				sp.Why += fmt.Sprintf(" (%d active entries weigh %.2f each)", h.Active, c.Weights.Active)
			}
			switch {
			case !growthOn && in.Earlier == nil:
				sp.Why += "; growth not known yet (no earlier scan)"
			case !growthOn:
				sp.Why += fmt.Sprintf("; growth rule off below %s pressure", c.GrowthPressure)
			case g.Gain < c.gainBar(c.GrowthMinGain, g.Window) && g.Window > c.GrowthWindow:
				sp.Why += fmt.Sprintf("; grew by %d in %s, under growth_min_gain %d per %s (%d over that span)",
					g.Gain, g.Window.Round(time.Second), c.GrowthMinGain, c.GrowthWindow, c.gainBar(c.GrowthMinGain, g.Window))
			case g.Gain < c.gainBar(c.GrowthMinGain, g.Window):
				sp.Why += fmt.Sprintf("; grew by %d in %s, under growth_min_gain %d", g.Gain, g.Window.Round(time.Second), c.GrowthMinGain)
			default:
				sp.Why += fmt.Sprintf("; grew by %d in %s but that is %.0f%% of the %d it holds, under growth_young %.0f%% (long-held: looks like many users)",
					g.Gain, g.Window.Round(time.Second), 100*g.Young(), g.Held, 100*c.GrowthYoung)
			}
		}
		out = append(out, sp)
	}
	return out
}

// wide returns the wide-prefix bans: a block of WideV4Bits/WideV6Bits in
// which WideBannedNets grouping prefixes hold bans, counting the active
// ones and this cycle's candidates. Only blocks touched by a candidate are
// considered; the evidence is what the block's grouping prefixes hold.
func (c *Config) wide(in *Input, snap *snapshot.Snapshot, cands []Decision, bits func(netip.Addr) int,
	allowed func(netip.Prefix) (string, bool), banned func(netip.Prefix) bool, p Pressure, threshold float64, skips *[]Skip) []Decision {
	if c.WideBannedNets <= 0 {
		return nil
	}
	wideBits := func(a netip.Addr) int {
		if a.Is4() {
			return c.WideV4Bits
		}
		return c.WideV6Bits
	}
	groups := map[netip.Prefix]map[netip.Prefix]bool{} // wide block -> grouping prefixes with bans
	var order []netip.Prefix
	for _, d := range cands {
		a := d.Target.Addr()
		wb, gb := wideBits(a), bits(a)
		if wb <= 0 || wb >= gb || d.Target.Bits() < gb {
			continue
		}
		w, _ := a.Prefix(wb)
		g, _ := a.Prefix(gb)
		if groups[w] == nil {
			if banned(w) {
				continue
			}
			groups[w] = map[netip.Prefix]bool{}
			order = append(order, w)
			if in.BannedGroupsIn != nil {
				for _, b := range in.BannedGroupsIn(w) {
					groups[w][b] = true
				}
			}
		}
		groups[w][g] = true
	}
	var out []Decision
	for _, w := range order {
		if len(groups[w]) < c.WideBannedNets {
			continue
		}
		var counts snapshot.Counts
		var members uint32
		for i := range snap.Prefixes {
			h := &snap.Prefixes[i]
			if w.Contains(h.Key.Addr()) {
				counts.Merge(&h.Counts)
				members += h.Members
			}
		}
		s := c.Score(&counts)
		if e, ok := allowed(w); ok {
			*skips = append(*skips, Skip{Target: w, Score: round(s), Why: "wide prefix covers allowlisted " + e})
			continue
		}
		off := c.offences(in, w)
		out = append(out, Decision{Target: w, TTL: c.TTL(off), Reason: ReasonWidePrefix, Score: round(s),
			Threshold: threshold, Pressure: p, Counts: counts, Members: members, Offences: off})
	}
	return out
}

// scoringMembers counts the sources inside p that score at least the
// member score.
func scoringMembers(snap *snapshot.Snapshot, p netip.Prefix, c *Config) int {
	n := 0
	for i := range snap.Sources {
		h := &snap.Sources[i]
		if p.Contains(h.Key.Addr()) && c.Score(&h.Counts) >= c.PrefixMemberScore {
			n++
		}
	}
	return n
}

func round(f float64) float64 { return math.Round(f*100) / 100 }
