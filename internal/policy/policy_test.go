package policy

import (
	"fmt"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/snapshot"
)

var now = time.Date(2026, 12, 1, 2, 0, 0, 0, time.UTC)

// world builds a snapshot from holders the way the aggregator would.
type world struct {
	sources []snapshot.Holder
}

func (w *world) add(src string, c snapshot.Counts) *world {
	a := netip.MustParseAddr(src)
	c.Entries = c.Idle + c.Active + c.Stalled + c.HalfOpen + c.Closing + c.Other
	w.sources = append(w.sources, snapshot.Holder{Key: netip.PrefixFrom(a, a.BitLen()), Counts: c})
	return w
}

func (w *world) snap() *snapshot.Snapshot {
	s := &snapshot.Snapshot{Config: snapshot.Config{}.WithDefaults()}
	pfx := map[netip.Prefix]*snapshot.Holder{}
	var order []netip.Prefix
	for _, h := range w.sources {
		s.Sources = append(s.Sources, h)
		s.Total += int(h.Entries)
		s.Classes[snapshot.HalfOpen] += int(h.HalfOpen)
		bits := 24
		if h.Key.Addr().Is6() {
			bits = 64
		}
		p, _ := h.Key.Addr().Prefix(bits)
		if pfx[p] == nil {
			pfx[p] = &snapshot.Holder{Key: p}
			order = append(order, p)
		}
		ph := pfx[p]
		ph.Members++
		for _, f := range []struct{ d, s *uint32 }{{&ph.Entries, &h.Entries}, {&ph.Idle, &h.Idle}, {&ph.Active, &h.Active},
			{&ph.Stalled, &h.Stalled}, {&ph.HalfOpen, &h.HalfOpen}, {&ph.Closing, &h.Closing}, {&ph.Other, &h.Other},
			{&ph.Orphan, &h.Orphan}, {&ph.OrphanActive, &h.OrphanActive}} {
			*f.d += *f.s
		}
	}
	for _, p := range order {
		s.Prefixes = append(s.Prefixes, *pfx[p])
	}
	snapshot.SortBy(s.Sources, snapshot.ByHeld)
	snapshot.SortBy(s.Prefixes, snapshot.ByHeld)
	return s
}

func input(s *snapshot.Snapshot, count, max int) Input {
	return Input{Now: now, Snapshot: s, Count: count, Max: max}
}

func targets(r Result) string {
	var out []string
	for _, d := range r.Bans {
		out = append(out, fmt.Sprintf("%s(%s)", d.Target, d.Reason))
	}
	return strings.Join(out, " ")
}

func TestDecide(t *testing.T) {
	bot := snapshot.Counts{Idle: 300}                              // the incident's bot, its entries idle
	freshBot := snapshot.Counts{Active: 150, OrphanActive: 150}    // seconds old, no socket behind them
	nat := snapshot.Counts{Active: 60, Closing: 20, Other: 4}      // 60 live users
	cgnat := snapshot.Counts{Active: 3000, Idle: 40, Closing: 500} // a big carrier NAT
	crowd := snapshot.Counts{Active: 2, Closing: 1}
	synflood := snapshot.Counts{HalfOpen: 1}

	cases := []struct {
		name       string
		w          *world
		count, max int
		rate       float64
		mod        func(*Input)
		want       string // bans, in order
		pressure   Pressure
		breaker    bool
		valve      bool
	}{
		{name: "the incident: bots banned, NAT gateways and crowd spared",
			w:     new(world).add("203.0.113.110", bot).add("198.51.100.204", bot).add("192.0.2.1", nat).add("192.0.2.2", nat).add("192.0.2.3", crowd).add("100.64.0.1", cgnat),
			count: 4000, max: 262144,
			want: "198.51.100.204/32(source-score) 203.0.113.110/32(source-score)", pressure: Calm},
		{name: "fresh bots are caught by the orphan signal before they go idle",
			w:     new(world).add("203.0.113.7", freshBot).add("192.0.2.1", nat),
			count: 300, max: 262144, want: "203.0.113.7/32(source-score)"},
		{name: "an office NAT with 200 quiet websockets (sockets held) is spared at calm",
			w:     new(world).add("198.51.100.50", snapshot.Counts{Idle: 200, ServedIdle: 200}),
			count: 5000, max: 262144, want: ""},
		{name: "the same source without a socket behind its entries is banned",
			w:     new(world).add("198.51.100.50", snapshot.Counts{Idle: 200, Orphan: 200}),
			count: 5000, max: 262144, want: "198.51.100.50/32(source-score)"},
		{name: "without sockets fresh entries look active: no ban at calm",
			w:     new(world).add("203.0.113.7", snapshot.Counts{Active: 150}),
			count: 300, max: 262144, want: ""},
		{name: "below min_entries nothing is banned even at critical",
			w:     new(world).add("203.0.113.7", snapshot.Counts{Idle: 9}),
			count: 250000, max: 262144, want: "", pressure: Critical, valve: true},
		{name: "high fill tightens the threshold",
			w:     new(world).add("203.0.113.7", snapshot.Counts{Idle: 40}).add("192.0.2.1", nat),
			count: 200000, max: 262144, want: "203.0.113.7/32(source-score)", pressure: High},
		{name: "the same holder at calm is left alone",
			w:     new(world).add("203.0.113.7", snapshot.Counts{Idle: 40}),
			count: 1000, max: 262144, want: ""},
		{name: "a fast-growing table is critical by forecast",
			w:     new(world).add("203.0.113.7", snapshot.Counts{Idle: 20}),
			count: 20000, max: 262144, rate: 5000, want: "203.0.113.7/32(source-score)", pressure: Critical},
		{name: "a table full of SYN-flood entries is not under pressure (early_drop evicts them)",
			w:     new(world).add("198.18.0.1", synflood).add("198.18.0.2", synflood),
			count: 262144, max: 262144, want: "", pressure: Calm},
		{name: "allowlisted sources are skipped",
			w:     new(world).add("203.0.113.110", bot),
			count: 4000, max: 262144,
			mod: func(in *Input) {
				in.Allowed = func(p netip.Prefix) (string, bool) {
					return "203.0.113.110/32 (ssh peer)", p.Contains(netip.MustParseAddr("203.0.113.110"))
				}
			},
			want: ""},
		{name: "already banned sources are not banned again",
			w:     new(world).add("203.0.113.110", bot),
			count: 4000, max: 262144,
			mod:  func(in *Input) { in.Banned = func(p netip.Prefix) bool { return p.IsSingleIP() } },
			want: ""},
		{name: "a third banned member turns into a prefix ban",
			w:     new(world).add("203.0.113.50", bot).add("192.0.2.1", nat),
			count: 4000, max: 262144,
			mod: func(in *Input) {
				in.BannedIn = func(p netip.Prefix) int {
					if p == netip.MustParsePrefix("203.0.113.0/24") {
						return 2
					}
					return 0
				}
			},
			want: "203.0.113.0/24(prefix-members)"},
		{name: "distributed low-and-slow: a prefix jointly holding too much",
			w: func() *world {
				w := new(world)
				for i := 1; i <= 20; i++ {
					w.add(fmt.Sprintf("198.51.100.%d", i), snapshot.Counts{Idle: 20})
				}
				for i := 1; i <= 20; i++ {
					w.add(fmt.Sprintf("192.0.2.%d", i), crowd)
				}
				return w
			}(),
			count: 2000, max: 262144, want: "198.51.100.0/24(prefix-score)"},
		{name: "a prefix over allowlisted space is never banned",
			w: func() *world {
				w := new(world)
				for i := 1; i <= 20; i++ {
					w.add(fmt.Sprintf("198.51.100.%d", i), snapshot.Counts{Idle: 20})
				}
				return w
			}(),
			count: 2000, max: 262144,
			mod: func(in *Input) {
				in.Allowed = func(p netip.Prefix) (string, bool) {
					return "198.51.100.1/32 (default gateway)", p.Contains(netip.MustParseAddr("198.51.100.1"))
				}
			},
			want: ""},
		{name: "IPv6 bots rotating through the /64s of one /48 become one /48 ban",
			w:     v6herd(10).add("2001:db8:1::5", crowd),
			count: 4000, max: 262144, want: "2001:db8:bad::/48(wide-prefix)"},
		{name: "seven /64s of a /48 stay per-address bans",
			w:     v6herd(7),
			count: 4000, max: 262144,
			want: "2001:db8:bad::1/128(source-score) 2001:db8:bad:1::1/128(source-score) 2001:db8:bad:2::1/128(source-score) " +
				"2001:db8:bad:3::1/128(source-score) 2001:db8:bad:4::1/128(source-score) 2001:db8:bad:5::1/128(source-score) 2001:db8:bad:6::1/128(source-score)"},
		{name: "earlier bans in other /64s of the /48 count",
			w:     v6herd(2),
			count: 4000, max: 262144,
			mod: func(in *Input) {
				in.BannedGroupsIn = func(p netip.Prefix) []netip.Prefix {
					if p != netip.MustParsePrefix("2001:db8:bad::/48") {
						return nil
					}
					var out []netip.Prefix
					for i := 0x10; i < 0x16; i++ {
						out = append(out, netip.MustParsePrefix(fmt.Sprintf("2001:db8:bad:%x::/64", i)))
					}
					return out
				}
			},
			want: "2001:db8:bad::/48(wide-prefix)"},
		{name: "a /48 over allowlisted space is never banned: its members are",
			w:     v6herd(8),
			count: 4000, max: 262144,
			mod: func(in *Input) {
				in.Allowed = func(p netip.Prefix) (string, bool) {
					return "2001:db8:bad:ff::10/128 (operator)", p.Contains(netip.MustParseAddr("2001:db8:bad:ff::10"))
				}
			},
			want: "2001:db8:bad::1/128(source-score) 2001:db8:bad:1::1/128(source-score) 2001:db8:bad:2::1/128(source-score) " +
				"2001:db8:bad:3::1/128(source-score) 2001:db8:bad:4::1/128(source-score) 2001:db8:bad:5::1/128(source-score) " +
				"2001:db8:bad:6::1/128(source-score) 2001:db8:bad:7::1/128(source-score)"},
		{name: "breaker caps a cycle at the share of active sources",
			w: func() *world {
				w := new(world)
				for i := 0; i < 150; i++ {
					w.add(fmt.Sprintf("2001:db8:%x::1", i), bot)
				}
				for i := 0; i < 50; i++ {
					w.add(fmt.Sprintf("192.0.2.%d", i), crowd)
				}
				return w
			}(),
			count: 50000, max: 262144, breaker: true},
		{name: "valve near full of unevictable entries",
			w:     new(world).add("203.0.113.110", snapshot.Counts{Idle: 250000}).add("192.0.2.1", nat),
			count: 255000, max: 262144, want: "203.0.113.110/32(source-score)", pressure: Critical, valve: true},
	}
	for _, c := range cases {
		in := input(c.w.snap(), c.count, c.max)
		if c.rate > 0 {
			in.RatePerSec, in.RateOK = c.rate, true
		}
		if c.mod != nil {
			c.mod(&in)
		}
		cfg := Default()
		r := Decide(in, cfg)
		got := targets(r)
		if c.breaker {
			if r.Breaker == nil || len(r.Bans) != r.Breaker.Cap || r.Breaker.Cap != 100 || r.Breaker.Wanted != 150 {
				t.Errorf("%s: breaker %+v with %d bans", c.name, r.Breaker, len(r.Bans))
			}
			continue
		}
		if got != c.want {
			t.Errorf("%s:\n got %q\nwant %q\nskips %+v", c.name, got, c.want, r.Skips)
		}
		if c.pressure != 0 && r.Pressure != c.pressure {
			t.Errorf("%s: pressure %s, want %s", c.name, r.Pressure, c.pressure)
		}
		if (r.Valve != nil) != c.valve {
			t.Errorf("%s: valve %+v", c.name, r.Valve)
		}
		if r.Breaker != nil {
			t.Errorf("%s: breaker tripped: %+v", c.name, r.Breaker)
		}
	}
}

// v6herd is n silent bots, one per /64 of 2001:db8:bad::/48.
func v6herd(n int) *world {
	w := new(world)
	for i := 0; i < n; i++ {
		w.add(fmt.Sprintf("2001:db8:bad:%x::1", i), snapshot.Counts{Idle: 300})
	}
	return w
}

func TestWideEvidence(t *testing.T) {
	r := Decide(input(v6herd(9).snap(), 4000, 262144), Default())
	if len(r.Bans) != 1 {
		t.Fatalf("bans %s", targets(r))
	}
	d := r.Bans[0]
	if d.Counts.Idle != 2700 || d.Members != 9 || d.Score != 2700 {
		t.Fatalf("evidence %+v", d)
	}
	off := Default()
	off.WideV6Bits = 0
	if r := Decide(input(v6herd(9).snap(), 4000, 262144), off); len(r.Bans) != 9 {
		t.Fatalf("wide_v6_bits = 0: bans %s", targets(r))
	}
}

func TestSkipsExplain(t *testing.T) {
	in := input(new(world).add("203.0.113.110", snapshot.Counts{Idle: 300}).snap(), 4000, 262144)
	in.Allowed = func(p netip.Prefix) (string, bool) { return "203.0.113.110/32 (ssh peer)", true }
	r := Decide(in, Default())
	if len(r.Skips) != 1 || !strings.Contains(r.Skips[0].Why, "ssh peer") || r.Skips[0].Score != 300 {
		t.Errorf("skips %+v", r.Skips)
	}
}

func TestValveAmount(t *testing.T) {
	in := input(new(world).add("203.0.113.110", snapshot.Counts{Idle: 250000}).snap(), 255000, 262144)
	r := Decide(in, Default())
	want := 255000 - 235929 // 0.90 of 262144, rounded down
	if r.Valve == nil || r.Valve.Free != want || len(r.Valve.Holders) != 1 {
		t.Fatalf("valve %+v, want free %d", r.Valve, want)
	}
}

func TestEscalation(t *testing.T) {
	c := Default()
	src := netip.MustParsePrefix("203.0.113.110/32")
	cases := []struct {
		prev Offence
		want time.Duration
	}{
		{Offence{}, 15 * time.Minute},
		{Offence{Count: 1, Last: now.Add(-time.Hour)}, time.Hour},
		{Offence{Count: 2, Last: now.Add(-time.Hour)}, 4 * time.Hour},
		{Offence{Count: 9, Last: now.Add(-time.Hour)}, 24 * time.Hour},
		{Offence{Count: 3, Last: now.Add(-25 * time.Hour)}, 15 * time.Minute}, // decayed
	}
	for _, tc := range cases {
		in := input(new(world).add("203.0.113.110", snapshot.Counts{Idle: 300}).snap(), 4000, 262144)
		in.History = func(p netip.Prefix) Offence {
			if p == src {
				return tc.prev
			}
			return Offence{}
		}
		r := Decide(in, c)
		if len(r.Bans) != 1 || r.Bans[0].TTL != tc.want {
			t.Errorf("after %+v: %+v, want ttl %v", tc.prev, r.Bans, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	if err := (&Config{}).Validate(); err == nil {
		t.Error("zero config accepted")
	}
	d := Default()
	if err := d.Validate(); err != nil {
		t.Fatalf("default: %v", err)
	}
	bad := []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.HighFill = 1.5 }, "high_fill"},
		{func(c *Config) { c.HighFill = 0.95 }, "rising"},
		{func(c *Config) { c.Threshold[2] = 200 }, "tighten"},
		{func(c *Config) { c.Threshold[0] = 0 }, "threshold[0]"},
		{func(c *Config) { c.Weights.Active = -1 }, "weights.active"},
		{func(c *Config) { c.BaseTTL = 0 }, "base_ttl"},
		{func(c *Config) { c.ValveTarget = 0.99 }, "valve_target"},
		{func(c *Config) { c.Escalation = 0.5 }, "escalation"},
		{func(c *Config) { c.MaxBansPerCycle = 0 }, "max_bans_per_cycle"},
		{func(c *Config) { c.CriticalETA = time.Hour }, "falling"},
		{func(c *Config) { c.WideV6Bits = 129 }, "wide_v6_bits"},
		{func(c *Config) { c.WideBannedNets = -1 }, "wide_banned_nets"},
		{func(c *Config) { c.Escalation = math.NaN() }, "escalation"},
		{func(c *Config) { c.Escalation = math.Inf(1) }, "escalation"},
		{func(c *Config) { c.Threshold[0] = math.Inf(1) }, "threshold[0]"},
		{func(c *Config) { c.HighFill = math.NaN() }, "high_fill"},
		{func(c *Config) { c.GrowthYoung = math.NaN() }, "growth_young"},
		{func(c *Config) { c.BaseTTL, c.MaxTTL = 800*time.Hour, 800*time.Hour }, "max_ttl <= 720h"},
	}
	for _, b := range bad {
		c := Default()
		b.mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("want error naming %q, got %v", b.want, err)
		}
	}
}

// earlier builds the growth input: what each key held window ago.
func earlier(window time.Duration, held map[string]uint32) *Held {
	h := &Held{Since: window, Entries: map[netip.Prefix]uint32{}}
	for k, v := range held {
		p, err := netip.ParsePrefix(k)
		if err != nil {
			a := netip.MustParseAddr(k)
			p = netip.PrefixFrom(a, a.BitLen())
		}
		h.Entries[p] = v
	}
	return h
}

// TestGrowthRule: keep-alive bots (handshake, a request, a few bytes every
// 20 s: their entries are active and served) score almost nothing, so
// under pressure the growth rule must find them, while a carrier NAT that
// holds more than any bot, and grows too, is spared because most of what it
// holds is older than the window.
func TestGrowthRule(t *testing.T) {
	kaBot := snapshot.Counts{Active: 300}
	cgnat := snapshot.Counts{Active: 1100, Closing: 40}
	nat := snapshot.Counts{Active: 60, Closing: 20}
	w := new(world).
		add("198.18.0.1", kaBot).       // new within the window
		add("198.18.0.2", kaBot).       // half of it new
		add("198.18.1.1", kaBot).       // held it all along: a retired bot
		add("203.0.113.12", cgnat).     // carrier NAT, grew by 200
		add("203.0.113.10", nat).       // NAT gateway
		add("2001:db8:bad:1::1", kaBot) // new, IPv6
	held := map[string]uint32{"198.18.0.2": 150, "198.18.1.1": 300, "203.0.113.12": 900, "203.0.113.10": 60}

	// High pressure (table filling within 30 min), with a window.
	in := input(w.snap(), 200_000, 262_144)
	in.RatePerSec, in.RateOK = 400, true
	in.Earlier = earlier(10*time.Second, held)
	r := Decide(in, Default())
	if r.Pressure != Critical && r.Pressure != High {
		t.Fatalf("pressure %s", r.Pressure)
	}
	if got, want := targets(r), "198.18.0.1/32(growth) 198.18.0.2/32(growth) 2001:db8:bad:1::1/128(growth)"; got != want {
		t.Fatalf("bans %q, want %q", got, want)
	}
	for _, d := range r.Bans {
		if d.Growth == nil || d.Growth.Window != 10*time.Second || d.Growth.Held != 300 {
			t.Errorf("%s: growth evidence %+v", d.Target, d.Growth)
		}
	}

	// The same table at elevated pressure: the rule is off.
	in.RatePerSec = 10
	in.Count = 100_000
	if r := Decide(in, Default()); len(r.Bans) != 0 || r.Pressure != Elevated {
		t.Fatalf("elevated pressure: %s %q", r.Pressure, targets(r))
	}

	// Scans slower than the window: the bar keeps its rate (150 per 15 s
	// is 200 over 20 s). 198.18.0.2 gained 150 in 20 s: too slow.
	in = input(w.snap(), 200_000, 262_144)
	in.RatePerSec, in.RateOK = 400, true
	in.Earlier = earlier(20*time.Second, held)
	r = Decide(in, Default())
	if got, want := targets(r), "198.18.0.1/32(growth) 2001:db8:bad:1::1/128(growth)"; got != want {
		t.Fatalf("over a 20 s span: bans %q, want %q", got, want)
	}

	// No earlier scan yet: nothing to compare, and the losing cycle says so.
	in = input(w.snap(), 240_000, 262_144)
	r = Decide(in, Default())
	if len(r.Bans) != 0 || len(r.Spared) == 0 || !strings.Contains(r.Spared[0].Why, "no earlier scan") {
		t.Fatalf("without growth: bans %q spared %+v", targets(r), r.Spared)
	}
}

// TestGrowthSparedExplains: at critical pressure with nothing to ban, the
// result names the top holders and why each was spared.
func TestGrowthSparedExplains(t *testing.T) {
	w := new(world).
		add("203.0.113.12", snapshot.Counts{Active: 1100}).
		add("198.18.1.1", snapshot.Counts{Active: 300}).
		add("192.0.2.1", snapshot.Counts{Active: 200}).
		add("203.0.113.10", snapshot.Counts{Active: 60})
	in := input(w.snap(), 250_000, 262_144)
	in.Earlier = earlier(12*time.Second, map[string]uint32{"203.0.113.12": 900, "198.18.1.1": 290, "203.0.113.10": 60})
	in.Allowed = func(p netip.Prefix) (string, bool) {
		if p.Contains(netip.MustParseAddr("192.0.2.1")) {
			return "192.0.2.1/32 (configured)", true
		}
		return "", false
	}
	r := Decide(in, Default())
	if len(r.Bans) != 0 || r.Pressure != Critical {
		t.Fatalf("bans %q at %s", targets(r), r.Pressure)
	}
	why := map[string]string{}
	for _, s := range r.Spared {
		why[s.Target.Addr().String()] = s.Why
	}
	for addr, want := range map[string]string{
		"203.0.113.12": "grew by 200 in 12s but that is 18% of the 1100 it holds",
		"198.18.1.1":   "grew by 10 in 12s, under growth_min_gain 150",
		"192.0.2.1":    "allowlisted: 192.0.2.1/32 (configured)",
		"203.0.113.10": "(60 active entries weigh 0.01 each); grew by 0",
	} {
		if !strings.Contains(why[addr], want) {
			t.Errorf("%s spared because %q, want it to say %q", addr, why[addr], want)
		}
	}
	// Compared over a span longer than the window, the bar says so.
	in.Earlier.Since = 20 * time.Second
	r = Decide(in, Default())
	if why, want := sparedWhy(r, "198.18.1.1"), "grew by 10 in 20s, under growth_min_gain 150 per 15s (200 over that span)"; !strings.Contains(why, want) {
		t.Errorf("198.18.1.1 spared because %q, want it to say %q", why, want)
	}
}

// TestPrefixGrowth: bots spread thin inside one /24, each under the
// growth bar, are banned as the /24 when together they grew the table.
func TestPrefixGrowth(t *testing.T) {
	w := new(world)
	held := map[string]uint32{}
	for i := range 6 {
		w.add(fmt.Sprintf("198.18.9.%d", i+1), snapshot.Counts{Active: 100})
	}
	w.add("198.18.10.1", snapshot.Counts{Active: 100}) // alone in its /24
	held["198.18.9.1"] = 0
	in := input(w.snap(), 250_000, 262_144)
	in.Earlier = earlier(10*time.Second, held)
	r := Decide(in, Default())
	if got := targets(r); got != "198.18.9.0/24(prefix-growth)" {
		t.Fatalf("bans %q", got)
	}
	// Three growing bots in one /24 are each banned, then the /24 by the
	// members rule replaces them.
	w = new(world)
	for i := range 3 {
		w.add(fmt.Sprintf("198.18.11.%d", i+1), snapshot.Counts{Active: 300})
	}
	in = input(w.snap(), 250_000, 262_144)
	in.Earlier = earlier(10*time.Second, nil)
	r = Decide(in, Default())
	if got := targets(r); got != "198.18.11.0/24(prefix-members)" {
		t.Fatalf("bans %q", got)
	}
	// The replaced members stay with the prefix ban, to be banned if the
	// prefix is refused.
	var members []string
	for _, d := range r.Bans[0].Instead {
		members = append(members, d.Target.String()+"("+d.Reason+")")
	}
	if got := strings.Join(members, " "); got != "198.18.11.1/32(growth) 198.18.11.2/32(growth) 198.18.11.3/32(growth)" {
		t.Fatalf("members kept with the prefix ban: %q", got)
	}
}

// TestValveActiveHolders: a full table of active entries still gets a
// valve: the holders include the growing sources and the biggest ones,
// never allowlisted space.
func TestValveActiveHolders(t *testing.T) {
	w := new(world).
		add("203.0.113.12", snapshot.Counts{Active: 1100}).
		add("198.18.0.1", snapshot.Counts{Active: 300}).
		add("192.0.2.1", snapshot.Counts{Active: 500}).
		add("198.18.5.5", snapshot.Counts{Idle: 20})
	in := input(w.snap(), 261_000, 262_144)
	in.Earlier = earlier(10*time.Second, map[string]uint32{"203.0.113.12": 1090})
	in.Allowed = func(p netip.Prefix) (string, bool) { return "local", p.Contains(netip.MustParseAddr("192.0.2.1")) }
	v := Decide(in, Default()).Valve
	if v == nil || v.Free != 261_000-235_929 {
		t.Fatalf("valve %+v", v)
	}
	got := fmt.Sprint(v.Holders, v.Growers)
	if want := "[198.18.5.5/32 198.18.0.1/32 203.0.113.12/32] [198.18.0.1/32 203.0.113.12/32]"; got != want {
		t.Fatalf("valve holders %s, want %s", got, want)
	}
}

// TestOrphanNoise: a few socket-less entries among a carrier NAT's many
// served ones (a socket listing under heavy churn misses some) do not make
// it score like a bot; a bot with sockets behind a few of its entries still
// scores on its orphans.
func TestOrphanNoise(t *testing.T) {
	c := Default()
	cgnat := snapshot.Counts{Active: 562, Orphan: 33, OrphanActive: 33}
	if s := c.Score(&cgnat); s > 6 {
		t.Errorf("carrier NAT with 6%% stray orphans scores %.2f", s)
	}
	bot := snapshot.Counts{Active: 300, Orphan: 270, OrphanActive: 270} // "netstat 30, conntrack 300"
	if s := c.Score(&bot); s < 270 {
		t.Errorf("bot with 90%% orphans scores %.2f", s)
	}
}

// TestPrefixGrowthNotOneMember: a /24 whose growth is mostly one member's
// is not banned as a spread-out herd: the member is judged on its own (here
// a young 300-connection holder, banned by the source rule), its four
// neighbours that each gained a little (users of NAT gateways starting up)
// are not swept along.
func TestPrefixGrowthNotOneMember(t *testing.T) {
	w := new(world).add("203.0.113.12", snapshot.Counts{Active: 300})
	for i := range 4 {
		w.add(fmt.Sprintf("203.0.113.%d", 20+i), snapshot.Counts{Active: 40})
	}
	in := input(w.snap(), 250_000, 262_144)
	in.Earlier = earlier(10*time.Second, nil)
	if got := targets(Decide(in, Default())); got != "203.0.113.12/32(growth)" {
		t.Fatalf("bans %q, want only the member that made most of the growth", got)
	}
}

// sparedWhy is why the result spared the source addr ("" if it did not).
func sparedWhy(r Result, addr string) string {
	for _, s := range r.Spared {
		if s.Target.Addr().String() == addr {
			return s.Why
		}
	}
	return ""
}
