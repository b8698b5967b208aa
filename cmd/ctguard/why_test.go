package main

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/daemon"
	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/snapshot"
	"github.com/ctguard/ctguard/internal/store"
)

// TestWhyActiveHolders: `why` explains a carrier NAT that was spared under
// critical pressure (growth mostly long-held) and a keep-alive bot that was
// banned by the growth rule, with the numbers behind each.
func TestWhyActiveHolders(t *testing.T) {
	now := time.Now()
	cfg := policy.Default()
	cgnat := netip.MustParseAddr("203.0.113.12")
	spared := daemon.WhyReply{
		Addr: cgnat, Pressure: policy.Critical, Threshold: 15, Policy: cfg, CycleAt: now,
		Source: &daemon.Holding{Key: netip.PrefixFrom(cgnat, 32), Counts: snapshot.Counts{Entries: 1100, Active: 1100}, Score: 11,
			Growth: policy.Growth{Gain: 200, Held: 1100, Window: 12 * time.Second}},
		Spared: "score 11.00 under threshold 15 (1100 active entries weigh 0.01 each); grew by 200 in 12s but that is 18% of the 1100 it holds, under growth_young 50% (long-held: looks like many users)",
	}
	var out bytes.Buffer
	printWhy(&out, &spared)
	for _, want := range []string{
		"growth rule  from high pressure: banned when it gained >= 150 ESTABLISHED entries within 15s and that is >= 50% of what it holds",
		"203.0.113.12/32: 1100 entries (idle 0, active 1100",
		"gained 200 ESTABLISHED entries in 12s, 18% of the 1100 it holds",
		"spared       at the last scan (critical pressure, nothing banned): score 11.00 under threshold 15",
		"long-held: looks like many users",
		"bans         none on record",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("spared why lacks %q:\n%s", want, out.String())
		}
	}

	bot := netip.MustParseAddr("198.18.0.7")
	g := &policy.Growth{Gain: 300, Held: 300, Window: 9 * time.Second}
	dec := policy.Decision{Target: netip.PrefixFrom(bot, 32), Reason: policy.ReasonGrowth, Score: 3, Threshold: 15,
		Pressure: policy.High, Counts: snapshot.Counts{Entries: 300, Active: 300}, Growth: g}
	banned := daemon.WhyReply{
		Addr: bot, Pressure: policy.High, Threshold: 30, Policy: cfg, CycleAt: now,
		Sessions: []allow.Entry{{Prefix: netip.PrefixFrom(bot, 32), Source: allow.SSH, Detail: "peer 198.18.0.7:40022"}},
		Bans: []store.Ban{{Prefix: netip.PrefixFrom(bot, 32), Reason: policy.ReasonGrowth, Count: 1, Last: now, Expires: now.Add(15 * time.Minute),
			Purged: 300, SocketsClosed: 300, Scoped: true,
			Evidence: "grew by 300 ESTABLISHED entries in 9s (100% of the 300 it holds) at high pressure, score 3.0: 300 entries (idle 0, orphan 0, half-open 0, active 300, ...)"}},
		Events: []daemon.Event{{Time: now, Target: dec.Target, Action: "ban", Decision: dec, Detail: "purged 300, remaining 0, closed 300 sockets"}},
	}
	out.Reset()
	printWhy(&out, &banned)
	for _, want := range []string{
		"ssh session  198.18.0.7/32 (open SSH session: peer 198.18.0.7:40022): not exempt, but a ban leaves the SSH ports open",
		"ban          198.18.0.7/32 ACTIVE, expires in",
		"(SSH ports left open): growth, banned 1 time,",
		"purged 300, 0 remained; closed 300 sockets",
		"evidence: grew by 300 ESTABLISHED entries in 9s (100% of the 300 it holds)",
		"ban 198.18.0.7/32 (growth: gained 300 in 9s, 100% of the 300 it holds, at high; score 3.0): purged 300, remaining 0, closed 300 sockets",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("banned why lacks %q:\n%s", want, out.String())
		}
	}
}
