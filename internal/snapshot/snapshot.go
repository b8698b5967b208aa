// Package snapshot aggregates a scan of the conntrack table into plain data:
// totals per state and protocol, and per remote source and per prefix the
// entries split into classes (idle, active, stalled, half-open, closing,
// other), plus an idle-time histogram.
//
// Only inbound entries (original destination is a local address) are
// attributed to a remote source: the host's own outbound flows never count
// against the peer. Aggregation is pure: it never talks to the kernel.
package snapshot

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/sockets"
)

// Class is what an entry means for the table's health.
type Class uint8

// Entry classes (design.md "Entry classes").
const (
	Idle     Class = iota // ESTABLISHED, idle at least the idle threshold
	Active                // ESTABLISHED, seen within the idle threshold
	Stalled               // ESTABLISHED, timeout capped by unacked data or retransmits
	HalfOpen              // SYN_SENT/SYN_SENT2/SYN_RECV, or never replied (any protocol)
	Closing               // FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE
	Other                 // replied non-TCP entries
	NumClasses
)

var classNames = [NumClasses]string{"idle", "active", "stalled", "half_open", "closing", "other"}

func (c Class) String() string {
	if c < NumClasses {
		return classNames[c]
	}
	return "unknown"
}

// Defaults for Config.
const (
	DefaultIdleThreshold      = 60
	DefaultStallCap           = 300
	DefaultEstablishedTimeout = 432000
	DefaultV4Bits             = 24
	DefaultV6Bits             = 64
	DefaultOrphanMinAge       = 2
)

// Config says how entries are classified and grouped.
type Config struct {
	// IdleThreshold (seconds): an ESTABLISHED entry quiet this long is idle.
	IdleThreshold uint32
	// StallCap (seconds): nf_conntrack_tcp_timeout_unacknowledged and
	// max_retrans. A remaining timeout at or below it is the kernel's cap for
	// busy or dead connections, never "idle for days".
	StallCap uint32
	// EstablishedTimeout (seconds): nf_conntrack_tcp_timeout_established,
	// the reference that remaining timeouts count down from.
	EstablishedTimeout uint32
	// OrphanMinAge (seconds): entries younger than this are never judged
	// orphans. Sockets are listed before the table is dumped, so a
	// connection made during the scan has no socket in the list yet.
	OrphanMinAge uint32
	// V4Bits and V6Bits are the prefix lengths sources are grouped by.
	V4Bits, V6Bits int
	// Local holds the host's own addresses; nil attributes every entry to
	// its original source.
	Local *LocalSet
	// KeepMin, when set, lists only the holders with at least that many
	// entries in a snapshot, or the KeepTop biggest when fewer hold that
	// much; the others still count in the totals and their prefixes. A daemon on a full table of
	// distinct sources must not keep a record per single-entry source.
	KeepMin uint32
	KeepTop int
}

// WithDefaults fills zero fields with the defaults.
func (c Config) WithDefaults() Config {
	if c.IdleThreshold == 0 {
		c.IdleThreshold = DefaultIdleThreshold
	}
	if c.StallCap == 0 {
		c.StallCap = DefaultStallCap
	}
	if c.EstablishedTimeout == 0 {
		c.EstablishedTimeout = DefaultEstablishedTimeout
	}
	if c.OrphanMinAge == 0 {
		c.OrphanMinAge = DefaultOrphanMinAge
	}
	if c.V4Bits == 0 {
		c.V4Bits = DefaultV4Bits
	}
	if c.V6Bits == 0 {
		c.V6Bits = DefaultV6Bits
	}
	return c
}

// LocalSet is the set of the host's own addresses. Hosts have a handful, so
// it is a slice: a linear scan beats hashing at that size.
type LocalSet struct{ addrs []netip.Addr }

// NewLocalSet builds a set from addresses (IPv4-mapped forms are unmapped).
func NewLocalSet(addrs ...netip.Addr) *LocalSet {
	s := &LocalSet{}
	for _, a := range addrs {
		a = a.Unmap().WithZone("")
		if a.IsValid() && !s.Contains(a) {
			s.addrs = append(s.addrs, a)
		}
	}
	return s
}

// Contains reports whether a is one of the host's addresses.
func (s *LocalSet) Contains(a netip.Addr) bool {
	if s == nil {
		return false
	}
	for _, l := range s.addrs {
		if l == a {
			return true
		}
	}
	return false
}

// Addrs returns the addresses.
func (s *LocalSet) Addrs() []netip.Addr {
	if s == nil {
		return nil
	}
	return slices.Clone(s.addrs)
}

// Len is the number of addresses.
func (s *LocalSet) Len() int {
	if s == nil {
		return 0
	}
	return len(s.addrs)
}

// Classify returns the class of e and, for ESTABLISHED entries that are not
// stalled, the idle time in seconds.
func Classify(e *conntrack.Entry, c *Config) (Class, uint32) {
	if e.Proto != conntrack.ProtoTCP {
		if !e.Status.Has(conntrack.StatusSeenReply) {
			return HalfOpen, 0
		}
		return Other, 0
	}
	switch e.TCPState {
	case conntrack.TCPSynSent, conntrack.TCPSynSent2, conntrack.TCPSynRecv:
		return HalfOpen, 0
	case conntrack.TCPFinWait, conntrack.TCPCloseWait, conntrack.TCPLastAck, conntrack.TCPTimeWait, conntrack.TCPClose:
		return Closing, 0
	case conntrack.TCPEstablished:
		if !e.Status.Has(conntrack.StatusSeenReply) {
			return HalfOpen, 0
		}
		if e.Timeout <= c.StallCap && c.EstablishedTimeout > c.StallCap {
			return Stalled, 0
		}
		var idle uint32
		if e.Timeout < c.EstablishedTimeout {
			idle = c.EstablishedTimeout - e.Timeout
		}
		if idle >= c.IdleThreshold {
			return Idle, idle
		}
		return Active, idle
	}
	if !e.Status.Has(conntrack.StatusSeenReply) {
		return HalfOpen, 0
	}
	return Other, 0
}

// Counts are the entries one source or prefix holds, by class.
type Counts struct {
	Entries       uint32 `json:"entries"`
	Idle          uint32 `json:"idle"`
	IdleAssured   uint32 `json:"idle_assured"`
	Active        uint32 `json:"active"`
	ActiveAssured uint32 `json:"active_assured"`
	Stalled       uint32 `json:"stalled"`
	HalfOpen      uint32 `json:"half_open"`
	Closing       uint32 `json:"closing"`
	Other         uint32 `json:"other"`
	// MaxIdle is the oldest idle time (seconds) among its ESTABLISHED entries.
	MaxIdle uint32 `json:"max_idle_seconds"`
	// Orphan counts idle or active entries to a local port with no served
	// socket behind them (only when sockets were listed); OrphanActive is
	// the active ones among them: fresh entries no application holds.
	Orphan       uint32 `json:"orphan"`
	OrphanActive uint32 `json:"orphan_active"`
	// ServedIdle counts idle entries that do have a socket behind them: an
	// application holds them (a quiet websocket, a keepalive pool) and
	// will time them out itself.
	ServedIdle uint32 `json:"served_idle"`
}

// Merge adds o's counts to c (MaxIdle is the larger of the two).
func (c *Counts) Merge(o *Counts) {
	c.Entries += o.Entries
	c.Idle += o.Idle
	c.IdleAssured += o.IdleAssured
	c.Active += o.Active
	c.ActiveAssured += o.ActiveAssured
	c.Stalled += o.Stalled
	c.HalfOpen += o.HalfOpen
	c.Closing += o.Closing
	c.Other += o.Other
	c.MaxIdle = max(c.MaxIdle, o.MaxIdle)
	c.Orphan += o.Orphan
	c.OrphanActive += o.OrphanActive
	c.ServedIdle += o.ServedIdle
}

func (c *Counts) add(cl Class, assured bool, idle uint32) {
	c.Entries++
	switch cl {
	case Idle:
		c.Idle++
		if assured {
			c.IdleAssured++
		}
	case Active:
		c.Active++
		if assured {
			c.ActiveAssured++
		}
	case Stalled:
		c.Stalled++
	case HalfOpen:
		c.HalfOpen++
	case Closing:
		c.Closing++
	case Other:
		c.Other++
	}
	if idle > c.MaxIdle {
		c.MaxIdle = idle
	}
}

// Class returns the count of one class.
func (c *Counts) Class(cl Class) uint32 {
	switch cl {
	case Idle:
		return c.Idle
	case Active:
		return c.Active
	case Stalled:
		return c.Stalled
	case HalfOpen:
		return c.HalfOpen
	case Closing:
		return c.Closing
	case Other:
		return c.Other
	}
	return 0
}

// Holder is one source address (a /32 or /128) or one prefix, with what it
// holds.
type Holder struct {
	Key netip.Prefix
	Counts
	// Members is the number of distinct sources (prefixes only).
	Members uint32
	// Service is where its entries go (read it with Snapshot.ServiceOf).
	Service ServiceRef `json:"service"`
}

// IdleBucketBounds are the upper bounds (seconds, exclusive) of the idle
// histogram buckets; the last bucket is open-ended.
var IdleBucketBounds = [...]uint32{60, 300, 900, 3600, 6 * 3600, 24 * 3600}

// NumIdleBuckets is the number of histogram buckets.
const NumIdleBuckets = len(IdleBucketBounds) + 1

// Snapshot is the aggregate of one scan.
type Snapshot struct {
	Time     time.Time
	Duration time.Duration
	Reader   string
	Config   Config

	Total     int
	Inbound   int // attributed to a remote source
	Outbound  int // original source is local
	Forwarded int // neither end local (routed, or DNAT elsewhere)
	States    [conntrack.NumTCPStates]int
	Protos    [256]int
	Classes   [NumClasses]int // over all entries
	Assured   int
	Orphans   int  // inbound idle/active entries with no served socket
	Sockets   bool // whether sockets were listed (the orphan signal exists)
	// IdleHist counts non-stalled ESTABLISHED entries by idle time.
	IdleHist [NumIdleBuckets]int

	Sources  []Holder // sorted by entries, descending
	Prefixes []Holder
	// Services are the destinations of the inbound entries (at most
	// MaxServices), in the order first seen; see ServiceOf, TopServices.
	Services []Service
	// NumSources and NumPrefixes count every holder seen, listed or not
	// (Config.KeepMin).
	NumSources, NumPrefixes int
}

// Aggregator folds entries into a Snapshot. Reuse one across scans: its
// maps keep their capacity, so a steady-state scan does not allocate per
// entry.
type Aggregator struct {
	cfg  Config
	snap Snapshot
	// Keyed by the 16-byte form: hashing it is cheaper than netip values.
	// Prefix keys are the masked address (the length is fixed per family).
	src  map[[16]byte]int32
	pfx  map[[16]byte]int32 // prefix -> index into pfxs, or -(source index+1) while it has one source
	srcs []source
	pfxs []Holder
	// svcIdx maps a service to its index+1 in snap.Services.
	svcIdx map[serviceKey]uint32
	// svcLast is the service looked up last (svcLastID: its id, 0: none).
	svcLast   serviceKey
	svcLastID uint32
	socks     *sockets.Set
	// listedAt is when the sockets were listed; orphanMin is the idle time
	// (seconds) an entry needs before it can be judged an orphan: the
	// configured minimum, or the time since the listing when a slow scan
	// has run longer (refreshed every orphanTick entries), because a
	// connection made during the scan has no socket in the list and an idle
	// time shorter than the scan so far.
	listedAt  time.Time
	orphanMin uint32
	tick      int
	// Now is the aggregator's clock (tests replace it).
	Now func() time.Time
}

const orphanTick = 1024

// source is the aggregator's record of one source: pointer-free and small,
// because a full table of distinct IPv6 sources has 262,144 of them.
type source struct {
	addr [16]byte
	is4  bool
	// pfx is the index of its prefix's holder in pfxs, or -1 while the
	// prefix has no other source (its counts are this source's).
	pfx int32
	Counts
	svc ServiceRef
}

func (r *source) key() netip.Prefix {
	a := netip.AddrFrom16(r.addr)
	if r.is4 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, a.BitLen())
}

// SetSockets gives the next scan the host's served sockets, listed just
// now, so that it counts orphan entries; nil turns the signal off.
func (a *Aggregator) SetSockets(s *sockets.Set) {
	a.socks = s
	a.listedAt = a.Now()
	a.tick = 0
	a.orphanMin = a.cfg.OrphanMinAge
}

// NewAggregator returns an aggregator for cfg (zero fields take defaults).
func NewAggregator(cfg Config) *Aggregator {
	a := &Aggregator{cfg: cfg.WithDefaults(), src: map[[16]byte]int32{}, pfx: map[[16]byte]int32{},
		svcIdx: map[serviceKey]uint32{}, Now: time.Now}
	a.Reset()
	return a
}

// Config returns the effective configuration.
func (a *Aggregator) Config() Config { return a.cfg }

// SetLocal replaces the host's addresses (they change: DHCP, SLAAC).
func (a *Aggregator) SetLocal(l *LocalSet) {
	a.cfg.Local = l
	a.snap.Config.Local = l
}

// Reset starts a new scan.
func (a *Aggregator) Reset() {
	clear(a.src)
	clear(a.pfx)
	clear(a.svcIdx)
	a.svcLastID = 0
	a.srcs, a.pfxs = a.srcs[:0], a.pfxs[:0]
	// The services' backing array is reused (Snapshot copies it).
	a.snap = Snapshot{Config: a.cfg, Services: a.snap.Services[:0]}
}

// Add folds one entry in.
func (a *Aggregator) Add(e *conntrack.Entry) {
	s := &a.snap
	s.Total++
	s.Protos[e.Proto]++
	if e.Proto == conntrack.ProtoTCP && e.TCPState < conntrack.NumTCPStates {
		s.States[e.TCPState]++
	}
	assured := e.Status.Has(conntrack.StatusAssured)
	if assured {
		s.Assured++
	}
	cl, idle := Classify(e, &a.cfg)
	s.Classes[cl]++
	if cl == Idle || cl == Active {
		b := 0
		for b < len(IdleBucketBounds) && idle >= IdleBucketBounds[b] {
			b++
		}
		s.IdleHist[b]++
	}
	src := e.Orig.Src
	if a.cfg.Local != nil {
		if a.cfg.Local.Contains(src) {
			s.Outbound++
			return
		}
		if !a.cfg.Local.Contains(e.Orig.Dst) && !a.cfg.Local.Contains(e.Reply.Src) {
			s.Forwarded++
			return
		}
	}
	s.Inbound++
	k := src.As16()
	i, ok := a.src[k]
	if !ok {
		i = a.newSource(src, k)
	}
	orphan, servedIdle := false, false
	if a.socks != nil && a.tick%orphanTick == 0 {
		a.orphanMin = max(a.cfg.OrphanMinAge, uint32(a.Now().Sub(a.listedAt)/time.Second)+1)
	}
	a.tick++
	if a.socks != nil && (cl == Idle || cl == Active) && idle >= a.orphanMin && a.cfg.Local.Contains(e.Reply.Src) {
		// The entry ends at a local port (no DNAT elsewhere): a served
		// socket should exist for it.
		orphan = !a.socks.Has(sockets.KeyOf(src, e.Orig.SrcPort, e.Reply.SrcPort))
		servedIdle = !orphan && cl == Idle
	}
	svc := a.serviceID(e)
	r := &a.srcs[i]
	r.add(cl, assured, idle)
	r.svc.vote(svc)
	if orphan {
		r.addOrphan(cl)
	}
	if servedIdle {
		r.ServedIdle++
	}
	if r.pfx < 0 {
		return // its prefix's counts are its own
	}
	h := &a.pfxs[r.pfx]
	h.add(cl, assured, idle)
	h.Service.vote(svc)
	if orphan {
		h.addOrphan(cl)
	}
	if servedIdle {
		h.ServedIdle++
	}
}

// newSource records a source seen for the first time and links it to its
// prefix. A prefix with one source has no holder of its own; the second
// source creates it from the first one's counts so far. (On a table of
// distinct IPv6 sources, one per /64, that halves the aggregator.)
func (a *Aggregator) newSource(src netip.Addr, k [16]byte) int32 {
	i := int32(len(a.srcs))
	a.src[k] = i
	a.srcs = append(a.srcs, source{addr: k, is4: src.Is4(), pfx: -1})
	p := a.prefixOf(src)
	pk := p.Addr().As16()
	j, ok := a.pfx[pk]
	switch {
	case !ok:
		a.pfx[pk] = -(i + 1)
	case j < 0:
		first := -j - 1
		j = int32(len(a.pfxs))
		a.pfx[pk] = j
		a.pfxs = append(a.pfxs, Holder{Key: p, Counts: a.srcs[first].Counts, Service: a.srcs[first].svc})
		a.srcs[first].pfx = j
		a.srcs[i].pfx = j
	default:
		a.srcs[i].pfx = j
	}
	return i
}

func (c *Counts) addOrphan(cl Class) {
	c.Orphan++
	if cl == Active {
		c.OrphanActive++
	}
}

func (a *Aggregator) prefixOf(src netip.Addr) netip.Prefix {
	bits := a.cfg.V4Bits
	if src.Is6() {
		bits = a.cfg.V6Bits
	}
	p, _ := src.Prefix(bits)
	return p
}

// Snapshot returns the aggregate so far, with sources and prefixes sorted
// by entries held. The result does not alias the aggregator.
func (a *Aggregator) Snapshot() *Snapshot {
	s := a.snap
	s.Sockets = a.socks != nil
	s.Services = slices.Clone(s.Services)
	for _, h := range a.srcs {
		s.Orphans += int(h.Orphan)
	}
	for i := range a.pfxs {
		a.pfxs[i].Members = 0
	}
	// Prefixes with one source are made from it here, only those listed.
	var singles []Holder
	srcs := make([]Holder, 0, min(len(a.srcs), 1024))
	for i := range a.srcs {
		r := &a.srcs[i]
		if r.pfx >= 0 {
			a.pfxs[r.pfx].Members++
		}
		if !a.listed(r.Entries, len(srcs)) {
			continue
		}
		key := r.key()
		srcs = append(srcs, Holder{Key: key, Counts: r.Counts, Service: r.svc})
		if r.pfx < 0 {
			singles = append(singles, Holder{Key: a.prefixOf(key.Addr()), Counts: r.Counts, Members: 1, Service: r.svc})
		}
	}
	for _, hs := range [][]Holder{a.pfxs, singles} {
		for i := range hs {
			if hs[i].Key.IsSingleIP() {
				hs[i].Members = 0 // a /32 or /128 grouping: its one source
			}
		}
	}
	s.NumSources, s.NumPrefixes = len(a.srcs), len(a.pfx)
	s.Sources = a.keep(srcs)
	s.Prefixes = a.keep(a.pfxs, singles)
	return &s
}

// listed says whether a holder with n entries goes into a snapshot that
// lists have so far (Config.KeepMin).
func (a *Aggregator) listed(n uint32, have int) bool {
	return a.cfg.KeepMin == 0 || n >= a.cfg.KeepMin || have < a.cfg.KeepTop
}

// keep copies the holders a snapshot lists (Config.KeepMin), sorted.
func (a *Aggregator) keep(lists ...[]Holder) []Holder {
	var out []Holder
	for _, hs := range lists {
		if a.cfg.KeepMin == 0 {
			out = append(out, hs...)
			continue
		}
		for i := range hs {
			if hs[i].Entries >= a.cfg.KeepMin {
				out = append(out, hs[i])
			}
		}
	}
	for _, hs := range lists {
		for i := 0; a.cfg.KeepMin > 0 && i < len(hs) && len(out) < a.cfg.KeepTop; i++ {
			if hs[i].Entries < a.cfg.KeepMin {
				out = append(out, hs[i])
			}
		}
	}
	SortBy(out, ByHeld)
	return out
}

// Order is how holders are ranked.
type Order int

// Orders for SortBy.
const (
	ByHeld     Order = iota // entries held
	ByIdle                  // idle entries
	ByHalfOpen              // half-open entries
)

// SortBy sorts holders descending by the order's count, then by entries,
// then by key, so output is stable.
func SortBy(hs []Holder, o Order) {
	key := func(h *Holder) uint32 {
		switch o {
		case ByIdle:
			return h.Idle
		case ByHalfOpen:
			return h.HalfOpen
		}
		return h.Entries
	}
	slices.SortFunc(hs, func(x, y Holder) int {
		if c := cmp.Compare(key(&y), key(&x)); c != 0 {
			return c
		}
		if c := cmp.Compare(y.Entries, x.Entries); c != 0 {
			return c
		}
		if c := x.Key.Addr().Compare(y.Key.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(x.Key.Bits(), y.Key.Bits())
	})
}
