package snapshot

import (
	"net/netip"
	"testing"

	"github.com/ctguard/ctguard/internal/conntrack"
)

// inbound returns an ESTABLISHED TCP entry from src to dst; a valid target
// makes it DNAT'ed there (the reply comes from the target).
func inbound(src string, sport uint16, dst netip.AddrPort, target netip.AddrPort) conntrack.Entry {
	e := conntrack.Entry{Proto: conntrack.ProtoTCP, TCPState: conntrack.TCPEstablished,
		Status:  conntrack.StatusAssured | conntrack.StatusSeenReply,
		Timeout: 431990, // 10 s idle at the default established timeout
		Orig:    conntrack.Tuple{Src: netip.MustParseAddr(src), Dst: dst.Addr(), SrcPort: sport, DstPort: dst.Port()},
	}
	r := dst
	if target.IsValid() {
		r = target
	}
	e.Reply = conntrack.Tuple{Src: r.Addr(), Dst: e.Orig.Src, SrcPort: r.Port(), DstPort: sport}
	return e
}

func TestServiceAttribution(t *testing.T) {
	web := netip.MustParseAddrPort("198.51.100.2:443")
	pub := netip.MustParseAddrPort("198.51.100.2:8080")   // published by DNAT
	ctr := netip.MustParseAddrPort("198.51.100.18:80")    // the container behind it
	ssh := netip.MustParseAddrPort("[2001:db8:ff::2]:22") // v6, no DNAT
	a := NewAggregator(Config{Local: NewLocalSet(web.Addr(), ssh.Addr())})
	add := func(src string, n int, dst, tgt netip.AddrPort) {
		for i := range n {
			e := inbound(src, uint16(10000+i), dst, tgt)
			a.Add(&e)
		}
	}
	add("203.0.113.7", 300, pub, ctr) // a bot at the published port only
	add("192.0.2.9", 5, web, netip.AddrPort{})
	add("192.0.2.9", 2, pub, ctr) // mostly the web server
	add("192.0.2.10", 2, web, netip.AddrPort{})
	add("192.0.2.10", 2, pub, ctr) // even: no majority
	add("2001:db8:bad::1", 3, ssh, netip.AddrPort{})
	s := a.Snapshot()

	want := []struct {
		holder, service string
		others, ok      bool
	}{
		{"203.0.113.7", "tcp 198.51.100.2:8080 -> 198.51.100.18:80", false, true},
		{"192.0.2.9", "tcp 198.51.100.2:443", true, true},
		{"192.0.2.10", "", true, false},
		{"2001:db8:bad::1", "tcp [2001:db8:ff::2]:22", false, true},
		// A prefix votes over its members' entries.
		{"192.0.2.0/24", "tcp 198.51.100.2:443", true, true},
		{"203.0.113.0/24", "tcp 198.51.100.2:8080 -> 198.51.100.18:80", false, true},
	}
	for _, w := range want {
		h := find(s.Sources, w.holder)
		if h == nil {
			h = find(s.Prefixes, w.holder)
		}
		if h == nil {
			t.Fatalf("%s not in the snapshot", w.holder)
		}
		svc, others, ok := s.ServiceOf(h)
		if ok != w.ok || others != w.others || (ok && svc.String() != w.service) {
			t.Errorf("%s: service %q others=%v ok=%v, want %q others=%v ok=%v", w.holder, svc, others, ok, w.service, w.others, w.ok)
		}
	}
	top := s.TopServices(0)
	if len(top) != 3 || top[0].Entries != 304 || top[0].Target != ctr || top[1].Entries != 7 || top[2].Entries != 3 {
		t.Errorf("services %+v", top)
	}
	if got := s.TopServices(1); len(got) != 1 || got[0].Port != 8080 {
		t.Errorf("TopServices(1) = %+v", got)
	}
	// The next scan starts afresh, and the snapshot taken is not changed by it.
	a.Reset()
	add("198.51.100.77", 1, web, netip.AddrPort{})
	if s2 := a.Snapshot(); len(s2.Services) != 1 || s2.Services[0].Entries != 1 || s.Services[0].Entries != 304 {
		t.Errorf("after a reset: %+v; the first snapshot's %+v", s2.Services, s.Services)
	}
}

// A flood to random ports makes a service per port: past MaxServices the
// entries count toward no service, and the holder is not named after one.
func TestServicesBounded(t *testing.T) {
	a := NewAggregator(Config{Local: NewLocalSet(netip.MustParseAddr("198.51.100.2"))})
	for i := range MaxServices + 100 {
		e := inbound("203.0.113.9", 40000, netip.AddrPortFrom(netip.MustParseAddr("198.51.100.2"), uint16(1+i)), netip.AddrPort{})
		a.Add(&e)
	}
	s := a.Snapshot()
	if len(s.Services) != MaxServices {
		t.Fatalf("%d services, want %d", len(s.Services), MaxServices)
	}
	if _, others, ok := s.ServiceOf(&s.Sources[0]); ok || !others {
		t.Errorf("a source spread over every port: ok=%v others=%v, want no service named", ok, others)
	}
}

func TestServiceVote(t *testing.T) {
	var v ServiceRef
	for _, id := range []uint32{1, 2, 1, 1, 3, 1} {
		v.vote(id)
	}
	if v.ID != 1 || !v.Others {
		t.Errorf("majority of 1: %+v", v)
	}
	var u ServiceRef
	u.vote(4)
	u.vote(4)
	if u.ID != 4 || u.Others || u.Lead != 2 {
		t.Errorf("one service: %+v", u)
	}
}
