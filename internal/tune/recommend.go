package tune

import (
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Budget is how much memory a completely full table may take, and the
// operator's other limits on the advice.
type Budget struct {
	// MemPercent of MemTotal (0 < MemPercent <= 50); DefaultBudgetPercent if 0.
	MemPercent float64
	// NATFloor is the shortest established timeout (s) advised on a host
	// that NATs: 0 means the default NATFloor, a negative value none.
	NATFloor int64
}

// DefaultBudgetPercent: 2 % of RAM lets a 0.5 GiB host hold about 20k
// entries and a 4 GiB host the 5.15+ large-host default of 262144.
const DefaultBudgetPercent = 2.0

// Memory model of one entry. Measured on Linux 6.18 (2026-12-01, fresh
// namespace, 50,000 UDP entries from loopback, SUnreclaim before and after):
// 256 B per entry without extensions, 384 B with an event listener attached
// (or acct+timestamp on): the extension area is a kmalloc-128 object. ctguard
// listens to events, so the extension is counted. The hash table adds one
// 8-byte hlist_nulls_head per bucket.
const (
	extBytes    = 128
	bucketBytes = 8
	// fallbackObjSize is assumed when /proc/slabinfo is unreadable (it is
	// mode 0400): sizeof(struct nf_conn) was 256-320 B on the x86_64 kernels
	// we looked at (256 on 6.18, measured); the larger value errs on the side
	// of a smaller table.
	fallbackObjSize = 320
	// maxCeiling caps the recommended table: a full dump costs about 1 s per
	// 262,144 entries, so 2M entries is an 8 s scan.
	maxCeiling = 1 << 21
	// pooledFloor protects pooled idle connections (database pools idle for
	// 10 minutes and more) whatever the observation says.
	pooledFloor = 3600
)

// Item is one recommended value.
type Item struct {
	Key          string `json:"key"`  // net.netfilter.nf_conntrack_max, or nf_conntrack.hashsize
	Name         string `json:"name"` // short name: nf_conntrack_max, hashsize
	Kind         string `json:"kind"` // "sysctl" or "module"
	Unit         string `json:"unit"` // entries, buckets, s
	Current      int64  `json:"current"`
	Recommended  int64  `json:"recommended"`
	Change       bool   `json:"change"`
	PerNamespace bool   `json:"per_namespace"` // settable inside a network namespace
	// NotLive says why the value cannot be set live here (empty: it can);
	// the files are still written, for the next boot.
	NotLive string `json:"not_live,omitempty"`
	// Owner is the agent that sets this value itself and would overwrite
	// it (kube-proxy): --apply leaves the item out, and the plan says which
	// of the agent's settings to change instead.
	Owner     string `json:"owner,omitempty"`
	Reason    string `json:"reason"`
	Memory    string `json:"memory,omitempty"`         // cost of Recommended
	MemoryNow string `json:"memory_current,omitempty"` // cost of Current
}

// Warning is another file or agent that sets a key tune changes.
type Warning struct {
	Key     string `json:"key,omitempty"`
	Source  string `json:"source"`
	Message string `json:"message"`
}

// TimeoutPolicy is the targeted alternative to a short global timeout: an
// nftables ct timeout object for inbound flows to public ports.
type TimeoutPolicy struct {
	Ports       []uint16 `json:"ports"`
	Established int64    `json:"established"`
	Reason      string   `json:"reason"`
	Nft         string   `json:"nft"`
}

// Plan is the full advice for one host.
type Plan struct {
	Kernel         Kernel         `json:"kernel"`
	MemTotal       uint64         `json:"mem_total_bytes"`
	BudgetPercent  float64        `json:"budget_percent"`
	EntryBytes     uint64         `json:"entry_bytes"` // per entry, extensions included, bucket excluded
	EntrySource    string         `json:"entry_source"`
	DefaultMax     int64          `json:"kernel_default_max"` // what this kernel picks for this RAM
	DefaultBuckets int64          `json:"kernel_default_buckets"`
	Items          []Item         `json:"items"`
	Warnings       []Warning      `json:"warnings,omitempty"`
	Notes          []string       `json:"notes,omitempty"`
	Policy         *TimeoutPolicy `json:"ct_timeout_policy,omitempty"`
	Observation    *Observation   `json:"observation,omitempty"`
	// NAT says why the host counts as NAT'ing (empty: it does not), and
	// NATFloor is the floor that put on the established timeout (0: none).
	NAT      string `json:"nat,omitempty"`
	NATFloor int64  `json:"nat_floor,omitempty"`
	// KubeProxy is what to set in kube-proxy's configuration instead of
	// the items it owns (nil without kube-proxy).
	KubeProxy []KubeProxySetting `json:"kube_proxy,omitempty"`
}

// KubeProxySetting is one kube-proxy setting tune advises in place of a
// sysctl that kube-proxy overwrites when it starts.
type KubeProxySetting struct {
	Field string `json:"field"` // KubeProxyConfiguration field, e.g. conntrack.maxPerCore
	Flag  string `json:"flag"`  // the command-line flag, e.g. --conntrack-max-per-core
	Value string `json:"value"` // as the config file and the flag take it
	Key   string `json:"key"`   // the sysctl it sets
	Note  string `json:"note,omitempty"`
}

// Item returns the plan's item with the given short name.
func (p *Plan) Item(name string) (Item, bool) {
	for _, it := range p.Items {
		if it.Name == name {
			return it, true
		}
	}
	return Item{}, false
}

// Changes are the items whose value should change.
func (p *Plan) Changes() []Item {
	var out []Item
	for _, it := range p.Items {
		if it.Change {
			out = append(out, it)
		}
	}
	return out
}

// DefaultTable is what nf_conntrack_init_start() picks when no hashsize is
// given, for a kernel and totalram (MemTotal is totalram_pages in bytes):
//
//	buckets = RAM / 16384 / sizeof(struct hlist_head)   (8 on 64-bit)
//	5.15+:  > 4 GiB -> 262144, > 1 GiB -> 65536, min 1024; max = 1 x buckets
//	older:  > 4 GiB -> 65536,  > 1 GiB -> 16384, min 32;   max = 4 x buckets
//
// nf_ct_alloc_hashtable() rounds buckets up to a whole page of heads (512)
// before max is computed (4.7+: one global table), which is why a 0.5 GiB VM
// gets 4096 buckets (16384 max on 4.9, 4096 on 5.15+) and not 3900.
// With an explicit hashsize (module option) max is 8 x hashsize on every
// kernel: see HashsizeMax.
func DefaultTable(k Kernel, memTotal uint64) (buckets, maxEntries int64) {
	const gib = 1 << 30
	b := int64(memTotal / 16384 / 8)
	factor := int64(4)
	if k.AtLeast(5, 15) {
		factor = 1
		switch {
		case memTotal > 4*gib:
			b = 262144
		case memTotal > gib:
			b = 65536
		}
		b = max(b, 1024)
	} else {
		switch {
		case memTotal > 4*gib:
			b = 65536
		case memTotal > gib:
			b = 16384
		}
		b = max(b, 32)
	}
	rounded := roundUp(b, 512)
	if !k.AtLeast(4, 7) {
		// Before 4.7 max was computed from the unrounded size.
		return rounded, factor * b
	}
	return rounded, factor * rounded
}

// HashsizeMax is the nf_conntrack_max a boot with "options nf_conntrack
// hashsize=N" gets before any sysctl runs: max_factor stays 8 when the size
// is given ("to avoid implicit reduction of the max entries setting").
func HashsizeMax(hashsize int64) int64 { return 8 * roundUp(hashsize, 512) }

func roundUp(v, m int64) int64 {
	if v <= 0 {
		return m
	}
	return (v + m - 1) / m * m
}

// entryBytes is the memory of one entry without its bucket, and where the
// number comes from.
func entryBytes(h *Host) (uint64, string) {
	if h.Slab != nil && h.Slab.ObjSize > 0 {
		c := h.Slab.ObjCost(h.PageSize)
		return c + extBytes, fmt.Sprintf("slabinfo %s: %d B per object + %d B extensions (measured on 6.18)", h.Slab.Name, c, extBytes)
	}
	return fallbackObjSize + extBytes, fmt.Sprintf("estimate: %d B object (slabinfo unreadable) + %d B extensions", fallbackObjSize, extBytes)
}

// humanBytes prints MiB (KiB below 1 MiB), one decimal below 10.
func humanBytes(b uint64) string {
	const kib, mib, gib = 1 << 10, 1 << 20, 1 << 30
	f := func(v float64, unit string) string {
		if v < 10 {
			return fmt.Sprintf("%.1f %s", v, unit)
		}
		return fmt.Sprintf("%.0f %s", v, unit)
	}
	switch {
	case b >= 10*gib:
		return f(float64(b)/gib, "GiB")
	case b >= mib:
		return f(float64(b)/mib, "MiB")
	default:
		return f(float64(b)/kib, "KiB")
	}
}

func pct(b, total uint64) string {
	if total == 0 {
		return "? %"
	}
	return fmt.Sprintf("%.1f %%", 100*float64(b)/float64(total))
}

// tableCost is the memory a full table of n entries and buckets heads takes.
func tableCost(n, buckets int64, entry uint64) uint64 {
	return uint64(max(n, 0))*entry + uint64(max(buckets, 0))*bucketBytes
}

func entriesCost(n, buckets int64, entry, mem uint64) string {
	c := tableCost(n, buckets, entry)
	return fmt.Sprintf("%d entries = %s = %s of RAM", n, humanBytes(c), pct(c, mem))
}

// Recommend computes the plan. It is pure: everything it needs is in h and
// obs (nil when no scan ran).
func Recommend(h *Host, obs *Observation, b Budget) Plan {
	if b.MemPercent <= 0 {
		b.MemPercent = DefaultBudgetPercent
	}
	entry, src := entryBytes(h)
	p := Plan{Kernel: h.Kernel, MemTotal: h.MemTotal, BudgetPercent: b.MemPercent,
		EntryBytes: entry, EntrySource: src, Observation: obs}
	p.DefaultBuckets, p.DefaultMax = DefaultTable(h.Kernel, h.MemTotal)

	p.NAT = natEvidence(h, obs)
	if p.NAT != "" {
		switch {
		case b.NATFloor == 0:
			p.NATFloor = NATFloor
		case b.NATFloor > 0:
			p.NATFloor = b.NATFloor
		}
	}

	p.sizing(h, obs, b, entry)
	p.timeouts(h, obs)
	p.policy(h, obs)
	p.kubeProxy(h)
	p.conflicts(h)
	return p
}

func (p *Plan) sizing(h *Host, obs *Observation, b Budget, entry uint64) {
	curMax, ok := h.Sysctl[Max]
	if !ok {
		return
	}
	// Both files show nf_conntrack_htable_size; read the one tune writes.
	curBuckets := h.Sysctl[Buckets]
	if curBuckets == 0 || (!h.BucketsWritable && h.HashsizeParam > 0) {
		curBuckets = h.HashsizeParam
	}
	peak := h.Sysctl[Count]
	if obs != nil {
		peak = max(peak, int64(obs.PeakCount))
	}

	// One bucket per entry, so each entry costs entry+8 bytes.
	budget := uint64(float64(h.MemTotal) * b.MemPercent / 100)
	fit := int64(budget/(entry+bucketBytes)) / 1024 * 1024
	rec := min(max(fit, 1024), maxCeiling)
	need := roundUp(2*peak, 1024)

	var why strings.Builder
	fmt.Fprintf(&why, "a full table must fit the memory budget (%g %% of RAM = %s at %d B per entry + %d B per bucket: %d entries)",
		b.MemPercent, humanBytes(budget), entry, bucketBytes, fit)
	if fit > maxCeiling {
		fmt.Fprintf(&why, ", capped at %d entries (a full dump costs about 1 s per 262144 entries)", maxCeiling)
	}
	fmt.Fprintf(&why, " and keep at least 2x the observed peak (%d entries)", peak)
	if rec < need {
		rec = need
		p.Warnings = append(p.Warnings, Warning{Key: keyPrefix + Max, Source: "budget",
			Message: fmt.Sprintf("the observed peak (%d entries) needs %d entries, more than the %g %% budget allows: raise --mem-budget or find what holds the table (ctguard top)", peak, need, b.MemPercent)})
		fmt.Fprintf(&why, "; the peak wins over the budget")
	}
	switch {
	case rec > curMax:
		fmt.Fprintf(&why, "; more room buys time against floods, but silent ESTABLISHED entries are never early-dropped, so the timeout and bans are what end such an attack")
	case rec < curMax:
		fmt.Fprintf(&why, "; the current limit lets a flood take %s of RAM", pct(tableCost(curMax, curBuckets, entry), h.MemTotal))
	}
	fmt.Fprintf(&why, ". Kernel %s default for this RAM: %d", h.Kernel.Release, p.DefaultMax)
	global := ""
	if !h.MaxWritable {
		global = "read-only in this network namespace: the table size is global, set it from the host's initial namespace"
	}
	p.Items = append(p.Items, Item{Key: keyPrefix + Max, Name: Max, Kind: "sysctl", Unit: "entries",
		Current: curMax, Recommended: rec, Change: rec != curMax, Reason: why.String(), NotLive: global,
		Memory: entriesCost(rec, rec, entry, h.MemTotal), MemoryNow: entriesCost(curMax, curBuckets, entry, h.MemTotal)})

	p.Notes = append(p.Notes, daemonMemoryNote(rec))

	if curBuckets == 0 {
		return
	}
	// hashsize = max on every kernel. Each entry is hashed twice (original
	// and reply tuple), so one bucket per entry keeps chains at 2 on average
	// when the table is full: the 5.15+ default. The older 4:1 default (chains
	// of 8) only kept the max of the days of list_heads; a bucket is 8 bytes
	// against ~400 per entry, so shorter chains cost under 3 % more memory,
	// and a full table is exactly when every lookup walks them.
	hrec := roundUp(rec, 512)
	hwhy := fmt.Sprintf("one bucket per entry: entries are hashed twice (original and reply), so chains average 2 in a full table (the 5.15+ default); now %.1f entries per bucket at max. Resizing live rehashes the table once",
		float64(curMax)/float64(curBuckets))
	it := Item{Key: keyPrefix + Buckets, Name: Buckets, Kind: "sysctl", Unit: "buckets",
		Current: curBuckets, Recommended: hrec, Change: hrec != curBuckets, NotLive: global,
		Memory:    fmt.Sprintf("%d buckets = %s", hrec, humanBytes(uint64(hrec)*bucketBytes)),
		MemoryNow: fmt.Sprintf("%d buckets = %s", curBuckets, humanBytes(uint64(curBuckets)*bucketBytes))}
	if h.BucketsWritable {
		// Set by sysctl.d next to nf_conntrack_max: no module option, so a
		// boot that skips the sysctl file falls back to the kernel defaults,
		// not to 8 x hashsize.
		it.Reason = hwhy + "; nf_conntrack_buckets is writable on this kernel, so sysctl.d sets it and no hashsize module option is needed"
	} else {
		// Older kernels: only the module option (or the /sys parameter at
		// run time) sizes the table, and an explicit hashsize makes the
		// boot-time default max 8 x hashsize.
		it.Key, it.Name, it.Kind = "nf_conntrack."+Hashsize, Hashsize, "module"
		if it.NotLive == "" && h.HashsizeParam == 0 {
			it.NotLive = "no readable /sys/module/nf_conntrack/parameters/hashsize"
		}
		it.Reason = hwhy + fmt.Sprintf(". nf_conntrack_buckets is read-only here: set by the module option hashsize=%d, which also makes the boot default max 8x = %d until sysctl.d sets nf_conntrack_max; ctguard's modules-load.d entry loads nf_conntrack before systemd-sysctl runs so that it does",
			hrec, HashsizeMax(hrec))
		if hm := HashsizeMax(hrec); hm > rec {
			p.Notes = append(p.Notes, fmt.Sprintf("if /etc/sysctl.d/%s is ever not applied at boot, nf_conntrack_max stays at 8 x hashsize = %s",
				SysctlFile, entriesCost(hm, hrec, entry, h.MemTotal)))
		}
	}
	p.Items = append(p.Items, it)
}

// The daemon's own memory in its worst case, a full table whose every
// entry comes from a distinct source (measured: 262,000 distinct IPv6 /64s,
// peak RSS 91 MiB, TestRootMemoryDistinctIPv6Sources; about 20 MiB of it
// does not grow with the table). The unit's MemoryMax is 256M.
const (
	daemonBaseMiB      = 20.0
	daemonMiBPerSource = 71.0 / 262144
	unitMemoryMaxMiB   = 256
)

func daemonMemoryNote(max int64) string {
	worst := daemonBaseMiB + daemonMiBPerSource*float64(max)
	room := (unitMemoryMaxMiB - daemonBaseMiB) / daemonMiBPerSource
	fits := int64(room) / 1024 * 1024
	return fmt.Sprintf("ctguard run itself: at a full table of %d entries each from its own source (its worst case) about %.0f MiB RSS; "+
		"the unit's MemoryMax=256M fits such tables up to about %d entries (few distinct sources need far less)", max, worst, fits)
}

func (p *Plan) timeouts(h *Host, obs *Observation) {
	if cur, ok := h.Sysctl[Established]; ok {
		mx, _ := p.Item(Max)
		p.Items = append(p.Items, established(h, obs, cur, mx.Recommended, p.NATFloor))
	}
	simple := []struct {
		name   string
		target int64
		why    string
	}{
		{SynSent, 120, "the host's own connection attempts: SYN retries (tcp_syn_retries=6) span 127 s; not an attack surface"},
		{SynRecv, 30, "handshakes complete in well under a second and a retransmitted SYN-ACK refreshes the entry; halves how long each spoofed SYN holds an entry (they are evictable, so this is hygiene, not a cure)"},
		{TimeWait, 60, "matches Linux TCP's own 60 s TIME_WAIT; on a busy web host TIME_WAIT entries are a large share of the table and, being ASSURED, early_drop() skips them"},
		{Unacked, 300, "the cap on entries with data in flight: busy or dead peers; lowering it drops state of slow but live transfers"},
		{MaxRetrans, 300, "the cap after tcp_max_retrans retransmissions; dead peers go within 5 minutes already"},
		{UDP, 30, "unreplied UDP entries are evictable: a spoofed UDP flood (98k pps measured) did not stop legit connections"},
		{UDPStream, 120, "replied UDP streams (DNS to a resolver, QUIC, VPN): shorter breaks NAT for them"},
	}
	for _, s := range simple {
		cur, ok := h.Sysctl[s.name]
		if !ok {
			continue
		}
		rec := min(cur, s.target)
		why := s.why
		if rec == cur {
			why = "keep: " + why
		} else {
			why = fmt.Sprintf("lower to %d s: %s", rec, why)
		}
		p.Items = append(p.Items, Item{Key: keyPrefix + s.name, Name: s.name, Kind: "sysctl", Unit: "s",
			Current: cur, Recommended: rec, Change: rec != cur, PerNamespace: true, Reason: why})
	}
}

// established picks nf_conntrack_tcp_timeout_established: the largest of
//   - pooledFloor (3600 s),
//   - twice the longest legit idle gap observed,
//   - the TCP keepalive time plus its probes (7200 + 9 x 75 = 7875 s by
//     default): a connection kept open by keepalive refreshes its entry only
//     when a probe goes out, and a NATed one whose entry expired cannot be
//     picked up again mid-stream,
//   - on a host that NATs, natFloor (NATFloor, 8400 s, unless the operator
//     changed it): the NAT'ed connections' ends are containers and remote
//     hosts whose keepalive is the 2 h default whatever this host's is,
//
// rounded up to 10 minutes, never above max(current, 432000).
func established(h *Host, obs *Observation, cur int64, maxRec int64, natFloor int64) Item {
	legit := obs.LegitIdleMax()
	ka := int64(0)
	if h.KeepaliveTime > 0 {
		ka = h.KeepaliveTime + max(h.KeepaliveIntvl, 0)*max(h.KeepaliveProbes, 0)
	}
	target := roundUp(max(pooledFloor, int64(2*legit+0.999), ka, natFloor), 600)
	rec := min(target, max(cur, 432000))

	var why strings.Builder
	if rec < cur {
		fmt.Fprintf(&why, "well below %d s: the timeout is an idle clock reset by every packet, and %d s is what lets silent bots hold ESTABLISHED+ASSURED entries that early_drop() never evicts. ", cur, cur)
	} else if rec > cur {
		fmt.Fprintf(&why, "raise: %d s is shorter than what legit idle connections need. ", cur)
	}
	fmt.Fprintf(&why, "Recommended = max(floor %d s for pooled idle connections", pooledFloor)
	switch {
	case obs == nil || obs.Scans == 0:
		why.WriteString(", no scan: legit idle gaps not measured")
	default:
		fmt.Fprintf(&why, ", 2 x longest legit idle gap %.0f s (outbound idle %.0f s, completed gaps %.0f s over %d scans)",
			legit, obs.OutboundMax, obs.CompletedGapMax, obs.Scans)
	}
	if ka > 0 {
		fmt.Fprintf(&why, ", tcp keepalive time + probes %d s", ka)
	}
	if natFloor > 0 {
		fmt.Fprintf(&why, ", NAT floor %d s", natFloor)
	}
	why.WriteString("), rounded up to 10 min")
	if natFloor > 0 {
		fmt.Fprintf(&why, ". NAT floor: this host translates addresses (Docker, Kubernetes services, MASQUERADE/DNAT), and a NAT'ed connection whose entry expires breaks (its translation is lost) where a local one is picked up again by its next packet; idle ones live on TCP keepalive, first probe after 2 h by default (7200 + 9 x 75 s = 7875 s); --nat-floor changes it")
	}
	if obs != nil && obs.Inbound.N > 0 {
		fmt.Fprintf(&why, "; %d of %d inbound ESTABLISHED entries in the last scan are idle longer than that",
			obs.InboundIdleOver(float64(rec)), obs.Inbound.N)
	}
	if rec < cur {
		fmt.Fprintf(&why, "; a connection that goes silent now holds its entry %d s instead of %d s (%.0fx shorter)", rec, cur, float64(cur)/float64(rec))
	}
	if g := obs.GrowthPerSecond(); g > 0 && rec < cur {
		// Entries created at rate g that never send again live rec
		// seconds: their number levels off at g x rec.
		level := int64(g * float64(rec))
		fmt.Fprintf(&why, "; if the observed growth (%.1f entries/min) is silent connections, they level off at about %d entries (growth x timeout", g*60, level)
		if maxRec > 0 {
			fmt.Fprintf(&why, ", %.0f %% of the recommended max", 100*float64(level)/float64(maxRec))
		}
		fmt.Fprintf(&why, ") instead of %d at %d s", int64(g*float64(cur)), cur)
	}
	why.WriteString(". Prefer a ct timeout policy on the public ports (below): it leaves outbound pools alone")
	return Item{Key: keyPrefix + Established, Name: Established, Kind: "sysctl", Unit: "s",
		Current: cur, Recommended: rec, Change: rec != cur, PerNamespace: true, Reason: why.String()}
}

// policy suggests the targeted alternative to a lower global timeout: a
// short established timeout (an nft ct timeout policy) only for inbound
// flows to public ports, so idle bots on :443 expire in minutes while the
// host's outbound pools keep theirs.
func (p *Plan) policy(h *Host, obs *Observation) {
	var ports []uint16
	for _, port := range h.ListenPorts {
		if port != 22 { // interactive SSH sessions sit idle for hours
			ports = append(ports, port)
		}
	}
	est := int64(600)
	if obs != nil {
		est = max(est, roundUp(int64(2*obs.CompletedInboundGapMax+0.999), 60))
	}
	list := "443"
	why := fmt.Sprintf("inbound flows to public ports get a %d s established timeout while the global value protects outbound pools; only new flows get it (existing entries keep theirs)", est)
	if len(ports) > 0 {
		s := make([]string, len(ports))
		for i, port := range ports {
			s[i] = fmt.Sprint(port)
		}
		list = strings.Join(s, ", ")
		why += "; ports: TCP listeners on non-loopback addresses, 22 left out (idle SSH sessions)"
	} else {
		why += "; no listening ports known, 443 is an example"
	}
	if obs != nil && obs.CompletedInboundGapMax > 0 {
		why += fmt.Sprintf("; longest completed inbound idle gap seen: %.0f s", obs.CompletedInboundGapMax)
	}
	// After dstnat (priority -100) a DNAT'ed flow's destination is the
	// container's, and a container's outbound flow is forwarded: neither is
	// local, so both keep the global timeout and its NAT floor.
	match := ""
	if p.NAT != "" {
		match = "fib daddr type local "
		why += "; this host NATs, so the rules only match flows to its own addresses (fib daddr type local): DNAT'ed and forwarded container flows keep the global timeout"
	}
	var nft strings.Builder
	fmt.Fprintf(&nft, "table inet ctguard_timeouts {\n")
	for _, fam := range []string{"ip", "ip6"} {
		fmt.Fprintf(&nft, "\tct timeout tcp_public_%s {\n\t\tprotocol tcp\n\t\tl3proto %s\n\t\tpolicy = { established: %d }\n\t}\n", fam, fam, est)
	}
	fmt.Fprintf(&nft, "\tchain pre {\n\t\ttype filter hook prerouting priority filter; policy accept;\n")
	fmt.Fprintf(&nft, "\t\tmeta nfproto ipv4 %stcp dport { %s } ct timeout set \"tcp_public_ip\"\n", match, list)
	fmt.Fprintf(&nft, "\t\tmeta nfproto ipv6 %stcp dport { %s } ct timeout set \"tcp_public_ip6\"\n\t}\n}\n", match, list)
	p.Policy = &TimeoutPolicy{Ports: ports, Established: est, Reason: why, Nft: nft.String()}
}

// kubeProxy hands the values kube-proxy sets at start (nf_conntrack_max
// from conntrack.maxPerCore x CPUs, at least conntrack.min; the established
// and close_wait timeouts) over to its configuration: the items are marked
// as owned, so --apply leaves them out, and the plan lists the settings that
// give the same values. It raises hashsize to max/4 only when it is smaller,
// so the recommended buckets (one per entry) stay and are applied.
func (p *Plan) kubeProxy(h *Host) {
	if !h.HasAgent("kube-proxy") {
		return
	}
	const own = "; kube-proxy sets this at start and would overwrite it: tune --apply leaves it alone, set it in kube-proxy's configuration (below)"
	for i := range p.Items {
		it := &p.Items[i]
		switch it.Name {
		case Max, Established, CloseWait:
			it.Owner = "kube-proxy"
			it.Reason += own
		}
	}
	if mx, ok := p.Item(Max); ok {
		perCore, note := "", ""
		if h.CPUs > 0 {
			pc := (mx.Recommended + int64(h.CPUs) - 1) / int64(h.CPUs)
			perCore = strconv.FormatInt(pc, 10)
			note = fmt.Sprintf("kube-proxy sets nf_conntrack_max = max(maxPerCore x %d CPUs, min) = %d", h.CPUs, max(pc*int64(h.CPUs), mx.Recommended))
		} else {
			perCore = fmt.Sprintf("%d/CPUs", mx.Recommended)
			note = "the CPU count is unknown here: divide by it and round up; kube-proxy sets nf_conntrack_max = max(maxPerCore x CPUs, min)"
		}
		p.KubeProxy = append(p.KubeProxy,
			KubeProxySetting{Field: "conntrack.maxPerCore", Flag: "--conntrack-max-per-core", Value: perCore, Key: mx.Key, Note: note},
			KubeProxySetting{Field: "conntrack.min", Flag: "--conntrack-min", Value: strconv.FormatInt(mx.Recommended, 10), Key: mx.Key})
	}
	if est, ok := p.Item(Established); ok {
		p.KubeProxy = append(p.KubeProxy, KubeProxySetting{Field: "conntrack.tcpEstablishedTimeout", Flag: "--conntrack-tcp-timeout-established",
			Value: (time.Duration(est.Recommended) * time.Second).String(), Key: est.Key, Note: fmt.Sprintf("%d s; kube-proxy's default is 24h", est.Recommended)})
	}
	if cw, ok := h.Sysctl[CloseWait]; ok {
		p.KubeProxy = append(p.KubeProxy, KubeProxySetting{Field: "conntrack.tcpCloseWaitTimeout", Flag: "--conntrack-tcp-timeout-close-wait",
			Value: (time.Duration(cw) * time.Second).String(), Key: keyPrefix + CloseWait,
			Note: fmt.Sprintf("keep the current %d s (kube-proxy's default is 1h): tune does not change it; half-closed NAT'ed connections need it", cw)})
	}
}

// conflicts finds other files and agents that set what the plan changes.
func (p *Plan) conflicts(h *Host) {
	changed, owned := map[string]bool{}, map[string]string{}
	for _, it := range p.Changes() {
		if it.Owner != "" {
			owned[it.Key] = it.Owner
			continue
		}
		changed[it.Key] = true
	}
	for _, f := range h.SysctlFiles {
		if path.Base(f.Path) == SysctlFile {
			continue
		}
		// systemd-sysctl applies sysctl.d files in file-name order; the
		// last one wins. /etc/sysctl.conf comes last with procps'
		// sysctl --system (Debian links it as 99-sysctl.conf).
		after := f.Path == "/etc/sysctl.conf" || path.Base(f.Path) > SysctlFile
		for _, s := range f.Settings {
			src := fmt.Sprintf("%s:%d", f.Path, s.Line)
			if o := owned[s.Key]; o != "" {
				p.Notes = append(p.Notes, fmt.Sprintf("%s sets %s = %s; %s overwrites it when it starts", src, s.Key, s.Value, o))
				continue
			}
			if !changed[s.Key] {
				continue
			}
			if after {
				p.Warnings = append(p.Warnings, Warning{Key: s.Key, Source: src,
					Message: fmt.Sprintf("sets %s = %s and is applied after ctguard's file: its value wins at boot", s.Key, s.Value)})
			} else {
				p.Notes = append(p.Notes, fmt.Sprintf("ctguard's file overrides %s (%s = %s)", src, s.Key, s.Value))
			}
		}
	}
	if changed["nf_conntrack."+Hashsize] || changed[keyPrefix+Buckets] {
		for _, f := range h.ModprobeFiles {
			if path.Base(f.Path) == ModprobeFile {
				continue
			}
			for _, o := range f.Options {
				if o.Module != "nf_conntrack" || o.Param != Hashsize {
					continue
				}
				src := fmt.Sprintf("%s:%d", f.Path, o.Line)
				if changed[keyPrefix+Buckets] {
					v, _ := strconv.ParseInt(o.Value, 10, 64)
					then := "resizes the table and sets nf_conntrack_max afterwards"
					if owned[keyPrefix+Max] != "" {
						then = "resizes the table afterwards, and " + owned[keyPrefix+Max] + " sets nf_conntrack_max"
					}
					p.Notes = append(p.Notes, fmt.Sprintf("%s sets hashsize=%s at module load (boot default max 8 x = %d); ctguard's sysctl file %s", src, o.Value, HashsizeMax(v), then))
					continue
				}
				if path.Base(f.Path) > ModprobeFile {
					p.Warnings = append(p.Warnings, Warning{Key: "nf_conntrack." + Hashsize, Source: src,
						Message: fmt.Sprintf("sets hashsize=%s after ctguard's file: its value wins when the module loads", o.Value)})
				} else {
					p.Notes = append(p.Notes, fmt.Sprintf("ctguard's file overrides %s (hashsize=%s)", src, o.Value))
				}
			}
		}
	}
	for _, a := range h.Agents {
		switch a.Name {
		case "kube-proxy":
			var hit []string
			for _, it := range p.Items {
				if it.Owner == "kube-proxy" && it.Change {
					hit = append(hit, it.Key)
				}
			}
			p.Warnings = append(p.Warnings, Warning{Source: "kube-proxy (" + a.Evidence + ")",
				Message: "kube-proxy sets nf_conntrack_max (conntrack.maxPerCore x CPUs, at least conntrack.min, 32768 and 131072 by default), tcp_timeout_established (conntrack.tcpEstablishedTimeout, 24h) and tcp_timeout_close_wait (conntrack.tcpCloseWaitTimeout, 1h) when it starts, after sysctl.d, and raises hashsize to max/4 when it is smaller. " +
					"tune --apply does not set " + listOr(hit, "these") + ": change kube-proxy's configuration as listed under \"kube-proxy settings\" (a node's kube-proxy ConfigMap or flags)"})
		case "docker":
			floorNote := " (tune keeps it at or above the NAT floor)"
			if p.NATFloor == 0 {
				floorNote = " (the NAT floor is off: --nat-floor 0)"
			}
			p.Warnings = append(p.Warnings, Warning{Source: "docker (" + a.Evidence + ")",
				Message: "dockerd loads nf_conntrack and masquerades container traffic: a NATed connection whose entry expired cannot be picked up again mid-stream, so idle container connections break at the established timeout" + floorNote + "; containers' own network namespaces have their own per-namespace timeouts, which these host values do not change"})
		}
	}
	slices.SortStableFunc(p.Warnings, func(a, b Warning) int { return strings.Compare(a.Key, b.Key) })
}

func listOr(s []string, dflt string) string {
	if len(s) == 0 {
		return dflt
	}
	return strings.Join(s, ", ")
}
