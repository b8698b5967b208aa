package snapshot

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/ctguard/ctguard/internal/conntrack"
)

// Service is where inbound entries go: a protocol, an address and port of
// this host, and, when the host rewrites the destination (DNAT: Docker's
// published ports, a Kubernetes NodePort, a load balancer's virtual
// address), the target the connections really reach.
type Service struct {
	Proto uint8      `json:"proto"` // IP protocol number
	Addr  netip.Addr `json:"addr"`
	Port  uint16     `json:"port"` // 0 for protocols without ports
	// Target is the rewritten destination (reply source of the entry),
	// invalid ("") when the destination was not rewritten.
	Target netip.AddrPort `json:"target"`
	// Entries counts the inbound entries to it in the scan.
	Entries int `json:"entries"`
}

// String is "tcp 198.51.100.2:443", with " -> 10.0.0.2:8443" when DNAT'ed.
func (s Service) String() string {
	var d string
	switch {
	case s.Port != 0:
		d = netip.AddrPortFrom(s.Addr, s.Port).String()
	default:
		d = s.Addr.String()
	}
	out := conntrack.ProtoName(s.Proto) + " " + d
	if s.Target.IsValid() {
		out += " -> " + s.Target.String()
	}
	return out
}

// MaxServices bounds the services one scan tells apart (a flood to random
// ports would make one per port); entries to further services are
// attributed to none.
const MaxServices = 4096

type serviceKey struct {
	dst, tgt   netip.Addr // original destination, reply source
	port, tprt uint16
	proto      uint8
}

// ServiceRef is where a holder's entries go, found in one pass and a few
// bytes (Boyer-Moore majority vote): a service with more than half of them
// always ends as the candidate with a lead; without such a majority the
// candidate is one of the services with many of them, or none (no lead).
// Read it with Snapshot.ServiceOf.
type ServiceRef struct {
	ID     uint32 `json:"id"`     // index+1 into Snapshot.Services; 0: none
	Lead   uint32 `json:"lead"`   // the vote's lead
	Others bool   `json:"others"` // some entries went to another service
}

func (v *ServiceRef) vote(id uint32) {
	switch {
	case id == 0:
		v.Others = v.Others || v.ID != 0 // a service past MaxServices
	case v.ID == id:
		v.Lead++
	case v.Lead == 0:
		v.Others = v.Others || v.ID != 0
		v.ID, v.Lead = id, 1
	default:
		v.Lead--
		v.Others = true
	}
}

// serviceID returns the index+1 of e's service, adding it if new (0: past
// MaxServices).
func (a *Aggregator) serviceID(e *conntrack.Entry) uint32 {
	k := serviceKey{dst: e.Orig.Dst, tgt: e.Reply.Src, port: e.Orig.DstPort, tprt: e.Reply.SrcPort, proto: e.Proto}
	// Most tables have a handful of services: the last one looked up is
	// usually the next one too, and comparing keys is cheaper than hashing.
	if a.svcLastID != 0 && k == a.svcLast {
		a.snap.Services[a.svcLastID-1].Entries++
		return a.svcLastID
	}
	id, ok := a.svcIdx[k]
	if !ok {
		if len(a.snap.Services) >= MaxServices {
			return 0
		}
		s := Service{Proto: e.Proto, Addr: e.Orig.Dst, Port: e.Orig.DstPort}
		if k.tgt != k.dst || k.tprt != k.port {
			s.Target = netip.AddrPortFrom(e.Reply.Src, e.Reply.SrcPort)
		}
		a.snap.Services = append(a.snap.Services, s)
		id = uint32(len(a.snap.Services))
		a.svcIdx[k] = id
	}
	a.snap.Services[id-1].Entries++
	a.svcLast, a.svcLastID = k, id
	return id
}

// ServiceOf returns the service h's entries go to, and whether some go
// elsewhere. When more than half of them go to one service, that is the
// one; when they are spread, it is one that many go to (others is then
// true), or none (ok false, as for a holder with no inbound entries).
func (s *Snapshot) ServiceOf(h *Holder) (svc Service, others, ok bool) {
	r := h.Service
	if r.ID == 0 || r.Lead == 0 || int(r.ID) > len(s.Services) {
		return Service{}, r.Others, false
	}
	return s.Services[r.ID-1], r.Others, true
}

// TopServices returns up to n services by entries, most first (n <= 0: all).
func (s *Snapshot) TopServices(n int) []Service {
	out := slices.Clone(s.Services)
	slices.SortStableFunc(out, func(x, y Service) int { return cmp.Compare(y.Entries, x.Entries) })
	if n > 0 && len(out) > n {
		out = out[:n]
	}
	return out
}
