package daemon

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/snapshot"
	"github.com/ctguard/ctguard/internal/store"
)

// why without a daemon: the policy decides on one scan, and the verdict
// says what a cycle would do, or why not.
func TestExplainOffline(t *testing.T) {
	now := time.Now()
	holder := func(key string, idle uint32, members uint32) snapshot.Holder {
		return snapshot.Holder{Key: netip.MustParsePrefix(key), Members: members,
			Counts: snapshot.Counts{Entries: idle, Idle: idle, IdleAssured: idle, MaxIdle: 3600}}
	}
	snap := &snapshot.Snapshot{Time: now, Config: snapshot.Config{V4Bits: 24, V6Bits: 64},
		Sources:  []snapshot.Holder{holder("203.0.113.110/32", 150, 0), holder("198.51.100.7/32", 30, 0), holder("192.0.2.50/32", 400, 0)},
		Prefixes: []snapshot.Holder{holder("203.0.113.0/24", 150, 1), holder("198.51.100.0/24", 30, 1), holder("192.0.2.0/24", 400, 1)},
	}
	list, err := allow.Load(allow.Config{ProcRoot: t.TempDir(), ResolvConf: "/nonexistent",
		InterfaceAddrs: func() ([]netip.Prefix, error) { return nil, nil },
		SSHPeers:       func([]uint16) ([]netip.AddrPort, error) { return nil, nil },
		Static:         []allow.Entry{{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Source: allow.Configured, Detail: "allow.addresses"}}}, now)
	if err != nil {
		t.Fatal(err)
	}
	manual := store.Ban{Prefix: netip.MustParsePrefix("198.51.100.9/32"), Reason: "manual", First: now, Last: now, Count: 1,
		Expires: now.Add(time.Hour), Origin: store.OriginManual}
	o := Offline{Snapshot: snap, Count: 1000, Max: 262144, Policy: policy.Default(), Bans: []store.Ban{manual}, Allowed: list}

	for target, want := range map[string]string{
		"203.0.113.110":   "would be banned: a cycle on this scan bans 203.0.113.110/32 (source-score, score 150.0 at calm pressure",
		"198.51.100.7":    "not banned: score 30.0 under the threshold 100 at calm pressure",
		"192.0.2.50":      "never banned: allowlisted (192.0.2.0/24",
		"198.51.100.9":    "BANNED: 198.51.100.9/32 by an operator (manual), for 1h",
		"203.0.113.0/24":  "not banned: 203.0.113.0/24 holds 150 entries from 1 source,",
		"198.51.100.0/24": "partly banned: 1 ban inside 198.51.100.0/24",
	} {
		p, err := netip.ParsePrefix(target)
		if err != nil {
			a := netip.MustParseAddr(target)
			p = netip.PrefixFrom(a, a.BitLen())
		}
		r := ExplainOffline(o, p)
		if !r.Offline || !strings.HasPrefix(r.Verdict, want) {
			t.Errorf("%s: offline %v, verdict %q\nwant prefix %q", target, r.Offline, r.Verdict, want)
		}
	}
}

// why names the service a source's entries go to, with the DNAT target.
func TestExplainService(t *testing.T) {
	now := time.Now()
	a := snapshot.NewAggregator(snapshot.Config{Local: snapshot.NewLocalSet(netip.MustParseAddr("198.51.100.2"))})
	for i := range 40 {
		e := conntrack.Entry{Proto: conntrack.ProtoTCP, TCPState: conntrack.TCPEstablished,
			Status: conntrack.StatusAssured | conntrack.StatusSeenReply, Timeout: 400000,
			Orig: conntrack.Tuple{Src: netip.MustParseAddr("203.0.113.110"), Dst: netip.MustParseAddr("198.51.100.2"),
				SrcPort: uint16(20000 + i), DstPort: 443},
			Reply: conntrack.Tuple{Src: netip.MustParseAddr("198.51.100.18"), Dst: netip.MustParseAddr("203.0.113.110"),
				SrcPort: 8443, DstPort: uint16(20000 + i)}}
		a.Add(&e)
	}
	snap := a.Snapshot()
	snap.Time = now
	list, err := allow.Load(allow.Config{ProcRoot: t.TempDir(), ResolvConf: "/nonexistent",
		InterfaceAddrs: func() ([]netip.Prefix, error) { return nil, nil },
		SSHPeers:       func([]uint16) ([]netip.AddrPort, error) { return nil, nil }}, now)
	if err != nil {
		t.Fatal(err)
	}
	r := ExplainOffline(Offline{Snapshot: snap, Count: 40, Max: 262144, Policy: policy.Default(), Allowed: list},
		netip.MustParsePrefix("203.0.113.110/32"))
	for name, h := range map[string]*Holding{"source": r.Source, "prefix": r.Prefix} {
		if h == nil || h.Service == nil || h.Service.String() != "tcp 198.51.100.2:443 -> 198.51.100.18:8443" || h.ServiceOthers {
			t.Errorf("%s: %+v", name, h)
		}
	}
}
