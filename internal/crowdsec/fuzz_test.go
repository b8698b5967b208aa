package crowdsec

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

// FuzzParseDecisions feeds the stream parser, the translation and the
// commit arbitrary bodies: no panic, and what comes out holds to the
// rules (bans only, on Ip or Range, masked, within the limits, bounded).
// Its seeds are in testdata/fuzz/FuzzParseDecisions.
func FuzzParseDecisions(f *testing.F) {
	f.Add([]byte(`{"new": [{"id": 1, "origin": "crowdsec", "type": "ban", "scope": "Ip", "value": "192.0.2.1", "duration": "3h59m58.2s", "scenario": "crowdsecurity/ssh-bf"}], "deleted": null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := Default()
		cfg.Pull, cfg.APIKey = true, "key-0123456789"
		cfg.MaxDecisions = 8
		c := &Client{cfg: cfg, now: time.Now}
		p := newPuller(c, "key", ApplyFunc(func(_, _ []Decision) {}))
		for _, startup := range []bool{true, false} {
			b := &batch{p: p, startup: startup, limit: cfg.MaxDecisions, newIDs: map[int64]int{}, delPfx: map[netip.Prefix]Decision{}}
			err := parseStream(bytes.NewReader(data), 1<<16, func(deleted bool, w wireDecision, bad error) {
				if bad == nil {
					d, why, _, _ := p.f.translate(w)
					if why == keep {
						check(t, &cfg, d)
					}
				}
				b.visit(deleted, w, bad)
			})
			if err != nil {
				continue
			}
			news, gone := p.commit(b, time.Now())
			for _, d := range news {
				check(t, &cfg, d)
			}
			for _, d := range gone {
				if !d.Prefix.IsValid() {
					t.Fatalf("deleted without a prefix: %+v", d)
				}
			}
			if len(p.held) > cfg.MaxDecisions || len(p.forwarded) > len(p.held) {
				t.Fatalf("held %d, forwarded %d, max %d", len(p.held), len(p.forwarded), cfg.MaxDecisions)
			}
		}
	})
}

func check(t *testing.T, cfg *Config, d Decision) {
	t.Helper()
	p := d.Prefix
	switch {
	case d.Type != TypeBan:
		t.Fatalf("type %q", d.Type)
	case d.Scope != ScopeIP && d.Scope != ScopeRange:
		t.Fatalf("scope %q", d.Scope)
	case !p.IsValid() || p != p.Masked() || p.Addr().Zone() != "" || p.Addr().Is4In6():
		t.Fatalf("prefix %v", p)
	case d.Scope == ScopeIP && !p.IsSingleIP():
		t.Fatalf("Ip decision on %v", p)
	case p.Addr().Is4() && p.Bits() < cfg.MinPrefixV4, p.Addr().Is6() && p.Bits() < cfg.MinPrefixV6:
		t.Fatalf("too broad: %v", p)
	case d.Remaining <= 0:
		t.Fatalf("remaining %v", d.Remaining)
	case cfg.Own(d.Scenario):
		t.Fatalf("own decision %+v", d)
	}
}
