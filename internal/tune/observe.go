package tune

import (
	"hash/maphash"
	"net/netip"
	"sort"
	"time"
)

// Flow is one TCP ESTABLISHED conntrack entry as the observer needs it.
type Flow struct {
	Proto            uint8
	Src, Dst         netip.Addr // original direction
	SrcPort, DstPort uint16
	Zone             uint16
	// Outbound: the original source is a local address, i.e. this host
	// opened the connection (its own database pools, API clients...).
	Outbound bool
	// Remaining is the entry's remaining timeout in seconds.
	Remaining uint32
	// NAT: the reply tuple is not the original one reversed (DNAT,
	// SNAT/MASQUERADE, REDIRECT): the connection breaks when the entry
	// expires.
	NAT bool
}

// IdleStats summarizes idle times (seconds) of one direction in one scan.
type IdleStats struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Observation is what the scans saw of ESTABLISHED idle times.
//
// Idle time = configured established timeout - remaining timeout: every
// packet resets the timeout. A single scan sees gaps
// still in progress; only the host's own outbound connections are legit by
// construction, so their idle times are the single-scan evidence. Across
// several scans, a flow whose idle time fell between two scans had a packet:
// that gap is over, and a connection that comes back after a gap is traffic,
// not a silent bot. Both feed LegitIdleMax.
type Observation struct {
	Scans     int           `json:"scans"`
	Window    time.Duration `json:"window_ns"`
	PeakCount int           `json:"peak_count"` // highest nf_conntrack_count seen by a scan
	// FirstCount and LastCount are nf_conntrack_count at the first and last
	// scan: with Window they give the table's growth rate.
	FirstCount int       `json:"first_count"`
	LastCount  int       `json:"last_count"`
	Reference  int64     `json:"reference_timeout"`
	Outbound   IdleStats `json:"outbound_idle"` // last scan
	Inbound    IdleStats `json:"inbound_idle"`  // last scan; includes forwarded flows
	// OutboundMax is the longest outbound idle time over all scans.
	OutboundMax float64 `json:"outbound_idle_max"`
	// CompletedGaps counts flows seen going idle and coming back; the Max
	// fields are upper bounds of the longest such gap, per direction.
	CompletedGaps          int     `json:"completed_gaps"`
	CompletedGapMax        float64 `json:"completed_gap_max"`
	CompletedInboundGapMax float64 `json:"completed_inbound_gap_max"`
	// Skipped counts entries whose idle time cannot be known: remaining at
	// or below the unacknowledged cap (busy or dead, design "stalled"), or
	// above the reference (set before a sysctl change, or by a ct timeout
	// policy).
	Skipped int `json:"skipped"`
	// NATed is the most ESTABLISHED entries with translated addresses or
	// ports seen in one scan.
	NATed int `json:"nat_entries,omitempty"`
	// inbound is the last scan's inbound idle times, sorted, so that
	// Recommend can say how many would expire under a new timeout.
	inbound []float32
}

// LegitIdleMax is the longest idle gap attributable to legitimate traffic.
func (o *Observation) LegitIdleMax() float64 {
	if o == nil {
		return 0
	}
	return max(o.OutboundMax, o.CompletedGapMax)
}

// GrowthPerSecond is how fast the table grew over the window (0 when it
// did not grow or there is a single scan).
func (o *Observation) GrowthPerSecond() float64 {
	if o == nil || o.Window <= 0 || o.LastCount <= o.FirstCount {
		return 0
	}
	return float64(o.LastCount-o.FirstCount) / o.Window.Seconds()
}

// InboundIdleOver counts last-scan inbound entries idle longer than s.
func (o *Observation) InboundIdleOver(s float64) int {
	if o == nil {
		return 0
	}
	i := sort.Search(len(o.inbound), func(i int) bool { return float64(o.inbound[i]) > s })
	return len(o.inbound) - i
}

// maxTracked bounds the per-flow memory across scans: beyond it new flows
// still count in the stats but are not followed for completed gaps.
// Measured (go1.26, amd64): 262,144 flows take 11 MiB (44 B per flow, map and
// idle slices together) and 325 ns per Add, so at most ~45 MiB.
const maxTracked = 1 << 20

// flowKey identifies a flow across scans (the remaining timeout changes).
type flowKey struct {
	proto            uint8
	src, dst         netip.Addr
	srcPort, dstPort uint16
	zone             uint16
}

type seen struct {
	idle float32
	scan int32
}

// Observer accumulates scans into an Observation. Not safe for concurrent use.
type Observer struct {
	// Follow flows across scans to find completed gaps (default true); a
	// single scan can turn it off and skip the per-flow map.
	Follow bool

	ref, cap     int64
	seed         maphash.Seed
	prev, cur    map[uint64]seen
	scan         int
	scanAt       []time.Time
	in, out      []float32
	nated        int
	obs          Observation
	inScan       bool
	lastInbound  []float32
	lastOutbound []float32
}

// NewObserver starts an observation against the live established timeout
// (reference) and the unacknowledged cap (usually 300 s).
func NewObserver(reference, unackCap int64) *Observer {
	return &Observer{Follow: true, ref: reference, cap: unackCap, seed: maphash.MakeSeed(),
		cur: map[uint64]seen{}, obs: Observation{Reference: reference}}
}

// BeginScan marks the start of one table scan at time t.
func (o *Observer) BeginScan(t time.Time) {
	o.prev, o.cur = o.cur, make(map[uint64]seen, len(o.cur))
	o.scanAt = append(o.scanAt, t)
	o.in, o.out = o.in[:0], o.out[:0]
	o.nated = 0
	o.inScan = true
}

// Add records one TCP ESTABLISHED entry of the current scan.
func (o *Observer) Add(f Flow) {
	if !o.inScan {
		return
	}
	if f.NAT {
		o.nated++
	}
	r := int64(f.Remaining)
	if (o.ref > o.cap && r <= o.cap) || r > o.ref {
		o.obs.Skipped++
		return
	}
	idle := float32(o.ref - r)
	if f.Outbound {
		o.out = append(o.out, idle)
		o.obs.OutboundMax = max(o.obs.OutboundMax, float64(idle))
	} else {
		o.in = append(o.in, idle)
	}
	if !o.Follow {
		return
	}
	k := maphash.Comparable(o.seed, flowKey{f.Proto, f.Src, f.Dst, f.SrcPort, f.DstPort, f.Zone})
	if p, ok := o.prev[k]; ok && int(p.scan) == o.scan-1 {
		dt := float32(o.scanAt[o.scan].Sub(o.scanAt[o.scan-1]).Seconds())
		// Remaining timeouts are whole seconds (jiffies rounded): allow 2 s
		// of jitter before calling it a packet.
		if expected := p.idle + dt; idle+2 < expected {
			// The gap began at most p.idle before the earlier scan and ended
			// idle before this one: expected-idle bounds it from above.
			gap := float64(expected - idle)
			o.obs.CompletedGaps++
			o.obs.CompletedGapMax = max(o.obs.CompletedGapMax, gap)
			if !f.Outbound {
				o.obs.CompletedInboundGapMax = max(o.obs.CompletedInboundGapMax, gap)
			}
		}
	}
	if len(o.cur) < maxTracked {
		o.cur[k] = seen{idle: idle, scan: int32(o.scan)}
	}
}

// EndScan closes the current scan; count is nf_conntrack_count at the time.
func (o *Observer) EndScan(count int) {
	if !o.inScan {
		return
	}
	o.inScan = false
	o.scan++
	o.obs.Scans = o.scan
	o.obs.PeakCount = max(o.obs.PeakCount, count)
	o.obs.NATed = max(o.obs.NATed, o.nated)
	if o.scan == 1 {
		o.obs.FirstCount = count
	}
	o.obs.LastCount = count
	o.obs.Window = o.scanAt[len(o.scanAt)-1].Sub(o.scanAt[0])
	o.lastInbound = append(o.lastInbound[:0], o.in...)
	o.lastOutbound = append(o.lastOutbound[:0], o.out...)
}

// Observation returns the summary so far.
func (o *Observer) Observation() *Observation {
	obs := o.obs
	in := append([]float32(nil), o.lastInbound...)
	out := append([]float32(nil), o.lastOutbound...)
	obs.Inbound = stats(in)
	obs.Outbound = stats(out)
	obs.inbound = in
	return &obs
}

// stats sorts v and summarizes it (nearest-rank quantiles).
func stats(v []float32) IdleStats {
	if len(v) == 0 {
		return IdleStats{}
	}
	sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	q := func(p float64) float64 {
		i := int(p*float64(len(v))+0.999999) - 1
		return float64(v[min(max(i, 0), len(v)-1)])
	}
	return IdleStats{N: len(v), P50: q(0.50), P90: q(0.90), P99: q(0.99), Max: float64(v[len(v)-1])}
}
