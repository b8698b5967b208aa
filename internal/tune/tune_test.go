package tune

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fixture copies testdata/<name> to a temp dir (so apply and rollback can
// write) and applies the file modes git cannot carry: the paths listed in
// <name>/readonly become 0444 (nf_conntrack_buckets is read-only on 4.9).
func fixture(t *testing.T, name string) Roots {
	t.Helper()
	src := filepath.Join("testdata", name)
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatalf("copy fixture %s: %v", name, err)
	}
	if ro, err := os.ReadFile(filepath.Join(src, "readonly")); err == nil {
		for _, rel := range strings.Fields(string(ro)) {
			if err := os.Chmod(filepath.Join(dst, rel), 0o444); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, d := range []string{"proc", "sys", "etc"} {
		if err := os.MkdirAll(filepath.Join(dst, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r := Roots{Procfs: filepath.Join(dst, "proc"), Sysfs: filepath.Join(dst, "sys"), Etc: filepath.Join(dst, "etc")}
	// Saved iptables-save / nft output, when the fixture has some.
	if st, err := os.Stat(filepath.Join(dst, "rules")); err == nil && st.IsDir() {
		r.Rules = filepath.Join(dst, "rules")
	}
	return r
}

func readHost(t *testing.T, r Roots) *Host {
	t.Helper()
	h, err := ReadHost(r)
	if err != nil {
		t.Fatalf("ReadHost: %v", err)
	}
	return h
}

func TestDefaultTable(t *testing.T) {
	const kib, mib, gib = 1 << 10, 1 << 20, 1 << 30
	k49 := Kernel{Release: "4.9.0", Major: 4, Minor: 9}
	k515 := Kernel{Release: "5.15.0", Major: 5, Minor: 15}
	k44 := Kernel{Release: "4.4.0", Major: 4, Minor: 4}
	for _, tc := range []struct {
		name         string
		k            Kernel
		mem          uint64
		buckets, max int64
	}{
		// The incident's t2.nano: 3890 buckets by the formula, rounded up to a
		// page of heads (4096): 4 x 4096 on 4.9, 1 x 4096 on 5.15+.
		{"0.5GiB 4.9", k49, 498004 * kib, 4096, 16384},
		{"0.5GiB 5.15", k515, 498004 * kib, 4096, 4096},
		{"0.5GiB 4.4 (max before rounding)", k44, 498004 * kib, 4096, 4 * 3890},
		{"64MiB 5.15 min 1024", k515, 64 * mib, 1024, 1024},
		{"64MiB 4.9", k49, 64 * mib, 512, 2048},
		{"exactly 4GiB 5.15", k515, 4 * gib, 65536, 65536},
		{"exactly 4GiB 4.9", k49, 4 * gib, 16384, 65536},
		{"64GiB 5.15", k515, 64 * gib, 262144, 262144},
		{"64GiB 4.9", k49, 64 * gib, 65536, 262144},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, m := DefaultTable(tc.k, tc.mem)
			if b != tc.buckets || m != tc.max {
				t.Errorf("DefaultTable = %d buckets, %d max; want %d, %d", b, m, tc.buckets, tc.max)
			}
		})
	}
	if got := HashsizeMax(21504); got != 172032 {
		t.Errorf("HashsizeMax(21504) = %d, want 8x = 172032", got)
	}
}

func TestReadHost(t *testing.T) {
	h := readHost(t, fixture(t, "incident-4.9"))
	if h.Kernel.Major != 4 || h.Kernel.Minor != 9 {
		t.Errorf("kernel %+v", h.Kernel)
	}
	if h.MemTotal != 498004*1024 {
		t.Errorf("MemTotal %d", h.MemTotal)
	}
	if h.Sysctl[Max] != 16384 || h.Sysctl[Buckets] != 4096 || h.Sysctl[Count] != 268 || h.Sysctl[Established] != 432000 {
		t.Errorf("sysctl %v", h.Sysctl)
	}
	if h.Slab != nil {
		t.Errorf("incident-4.9 has no slabinfo, got %+v", h.Slab)
	}
	if h.BucketsWritable {
		t.Error("4.9 nf_conntrack_buckets is read-only (0444 in the fixture)")
	}
	if h.KeepaliveTime != 7200 || h.KeepaliveIntvl != 75 || h.KeepaliveProbes != 9 {
		t.Errorf("keepalive %d %d %d", h.KeepaliveTime, h.KeepaliveIntvl, h.KeepaliveProbes)
	}
	if len(h.ListenPorts) != 2 || h.ListenPorts[0] != 22 || h.ListenPorts[1] != 443 {
		t.Errorf("listen ports %v, want [22 443] (3306 on loopback excluded)", h.ListenPorts)
	}
	addrs, err := LocalAddrs(fixture(t, "incident-4.9").Procfs)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("172.31.19.247")}
	if len(addrs) != 2 || addrs[0] != want[0] || addrs[1] != want[1] {
		t.Errorf("LocalAddrs = %v, want %v", addrs, want)
	}

	h = readHost(t, fixture(t, "kube"))
	if !h.BucketsWritable || h.Slab == nil || h.Slab.ObjSize != 256 {
		t.Errorf("kube: writable %v slab %+v", h.BucketsWritable, h.Slab)
	}
	if len(h.Agents) != 1 || h.Agents[0].Name != "kube-proxy" || !strings.Contains(h.Agents[0].Evidence, "4242") {
		t.Errorf("agents %+v", h.Agents)
	}

	if _, err := ReadHost(Roots{Procfs: t.TempDir(), Sysfs: t.TempDir(), Etc: t.TempDir()}); err == nil {
		t.Error("empty procfs: want an error")
	}
	r := fixture(t, "incident-5.15")
	os.Remove(r.SysctlPath(Max))
	if _, err := ReadHost(r); !errors.Is(err, ErrNoConntrack) {
		t.Errorf("no nf_conntrack_max: err %v, want ErrNoConntrack", err)
	}
}

// incidentObservation is one scan of the incident's ten entries: all inbound to
// :443, idle 662, 2772, 953, 195, 2688, 294, 1752, 1942, 2850, 2409 s.
func incidentObservation(t *testing.T) *Observation {
	o := NewObserver(432000, 300)
	o.BeginScan(time.Unix(1000, 0))
	for i, idle := range []uint32{662, 2772, 953, 195, 2688, 294, 1752, 1942, 2850, 2409} {
		o.Add(Flow{Proto: 6, Src: netip.MustParseAddr("78.39.13.110"), Dst: netip.MustParseAddr("172.31.19.247"),
			SrcPort: uint16(40000 + i), DstPort: 443, Remaining: 432000 - idle})
	}
	o.EndScan(268)
	obs := o.Observation()
	if obs.Inbound.N != 10 || obs.Inbound.Max != 2850 || obs.Inbound.P50 != 1752 || obs.Outbound.N != 0 {
		t.Fatalf("incident observation %+v", obs)
	}
	return obs
}

func TestRecommendFixtures(t *testing.T) {
	type want struct {
		max, hash            int64
		hashKey              string
		established          int64
		defaultMax           int64
		entryBytes           uint64
		warnings, notes      []string // substrings, each must appear
		noWarnings           bool
		maxMemory            string
		establishedReasonHas string
	}
	for _, tc := range []struct {
		name string
		obs  func(t *testing.T) *Observation
		want want
	}{
		{"incident-4.9", incidentObservation, want{
			// 2 % of 509956096 B / (448+8) B = 22366 -> 21504; hashsize via
			// the module option (buckets read-only), which makes the boot
			// default 8 x 21504.
			max: 21504, hash: 21504, hashKey: "nf_conntrack.hashsize", established: 8400, defaultMax: 16384, entryBytes: 448,
			noWarnings: true, notes: []string{"8 x hashsize = 172032 entries"},
			maxMemory:            "21504 entries = 9.4 MiB = 1.9 % of RAM",
			establishedReasonHas: "0 of 10 inbound ESTABLISHED entries",
		}},
		{"incident-5.15", incidentObservation, want{
			// 256 B objects from slabinfo: 2 % / 392 B = 26018 -> 25600.
			max: 25600, hash: 25600, hashKey: "net.netfilter.nf_conntrack_buckets", established: 8400, defaultMax: 4096, entryBytes: 384,
			noWarnings: true, maxMemory: "25600 entries = 9.6 MiB = 2.0 % of RAM",
		}},
		{"host-4g", nil, want{
			max: 208896, hash: 208896, hashKey: "net.netfilter.nf_conntrack_buckets", established: 8400, defaultMax: 65536, entryBytes: 384,
			warnings:             []string{"/etc/sysctl.conf:2", "nf_conntrack_max = 65536"},
			notes:                []string{"overrides /etc/sysctl.d/50-old-conntrack.conf:2 (net.netfilter.nf_conntrack_tcp_timeout_established = 86400)"},
			establishedReasonHas: "no scan",
		}},
		{"host-64g", nil, want{
			// 2 % of 63 GiB is 3.4M entries: capped at 2M (8 s full dumps).
			max: 1 << 21, hash: 1 << 21, hashKey: "net.netfilter.nf_conntrack_buckets", established: 8400, defaultMax: 262144, entryBytes: 384,
			warnings: []string{"dockerd loads nf_conntrack"},
		}},
		{"kube", nil, want{
			max: 417792, hash: 417792, hashKey: "net.netfilter.nf_conntrack_buckets", established: 8400, defaultMax: 262144, entryBytes: 384,
			// kube-proxy owns max and the established timeout: the k8s
			// sysctl file setting them is a note, not a boot-order warning
			// (tune does not write them).
			warnings: []string{"kube-proxy sets nf_conntrack_max", "pid 4242", "tune --apply does not set"},
			notes: []string{"/etc/modprobe.d/nf_conntrack.conf:1 sets hashsize=32768",
				"/etc/sysctl.d/95-k8s-conntrack.conf:2 sets net.netfilter.nf_conntrack_tcp_timeout_established = 86400; kube-proxy overwrites it",
				"/etc/sysctl.d/95-k8s-conntrack.conf:3 sets net.netfilter.nf_conntrack_max = 131072; kube-proxy overwrites it"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := readHost(t, fixture(t, tc.name))
			var obs *Observation
			if tc.obs != nil {
				obs = tc.obs(t)
			}
			p := Recommend(h, obs, Budget{})
			w := tc.want
			if p.EntryBytes != w.entryBytes || p.DefaultMax != w.defaultMax {
				t.Errorf("entry %d B (want %d), kernel default max %d (want %d)", p.EntryBytes, w.entryBytes, p.DefaultMax, w.defaultMax)
			}
			if p.DefaultMax != h.Sysctl[Max] && tc.name != "kube" {
				t.Errorf("fixture max %d is not the kernel default %d for its RAM", h.Sysctl[Max], p.DefaultMax)
			}
			mx, _ := p.Item(Max)
			if mx.Recommended != w.max || !mx.Change {
				t.Errorf("max: %+v, want %d", mx, w.max)
			}
			if w.maxMemory != "" && mx.Memory != w.maxMemory {
				t.Errorf("max memory %q, want %q", mx.Memory, w.maxMemory)
			}
			var hash Item
			for _, it := range p.Items {
				if it.Name == Hashsize || it.Name == Buckets {
					hash = it
				}
			}
			if hash.Key != w.hashKey || hash.Recommended != w.hash {
				t.Errorf("hash: %+v, want %s = %d", hash, w.hashKey, w.hash)
			}
			est, _ := p.Item(Established)
			if est.Recommended != w.established || !est.Change {
				t.Errorf("established: %+v, want %d", est, w.established)
			}
			if !strings.Contains(est.Reason, "ct timeout policy") {
				t.Errorf("established reason does not point to ct timeout policies: %s", est.Reason)
			}
			if w.establishedReasonHas != "" && !strings.Contains(est.Reason, w.establishedReasonHas) {
				t.Errorf("established reason %q lacks %q", est.Reason, w.establishedReasonHas)
			}
			if sr, _ := p.Item(SynRecv); sr.Recommended != 30 {
				t.Errorf("syn_recv %+v", sr)
			}
			if tw, _ := p.Item(TimeWait); tw.Recommended != 60 {
				t.Errorf("time_wait %+v", tw)
			}
			if u, _ := p.Item(Unacked); u.Change {
				t.Errorf("unacknowledged should stay: %+v", u)
			}
			var ws, ns strings.Builder
			for _, x := range p.Warnings {
				ws.WriteString(x.Source + " " + x.Message + "\n")
			}
			for _, x := range p.Notes {
				ns.WriteString(x + "\n")
			}
			if w.noWarnings && len(p.Warnings) > 0 {
				t.Errorf("unexpected warnings:\n%s", ws.String())
			}
			for _, s := range w.warnings {
				if !strings.Contains(ws.String(), s) {
					t.Errorf("warnings lack %q:\n%s", s, ws.String())
				}
			}
			for _, s := range w.notes {
				if !strings.Contains(ns.String(), s) {
					t.Errorf("notes lack %q:\n%s", s, ns.String())
				}
			}
			if p.Policy == nil || !strings.Contains(p.Policy.Nft, "ct timeout set") {
				t.Errorf("no ct timeout policy: %+v", p.Policy)
			}
			var out bytes.Buffer
			WritePlan(&out, p)
			if !strings.Contains(out.String(), mx.Memory) {
				t.Errorf("printed plan lacks the memory cost %q", mx.Memory)
			}
		})
	}
}

func TestRecommendRules(t *testing.T) {
	base := func() *Host {
		return &Host{Kernel: Kernel{Release: "6.1", Major: 6, Minor: 1}, MemTotal: 4 << 30, PageSize: 4096, BucketsWritable: true,
			KeepaliveTime: 7200, KeepaliveIntvl: 75, KeepaliveProbes: 9,
			Sysctl: map[string]int64{Max: 65536, Buckets: 65536, Count: 100, Established: 432000, Unacked: 300}}
	}
	obsWith := func(outIdle, gap float64, peak int) *Observation {
		return &Observation{Scans: 2, PeakCount: peak, OutboundMax: outIdle, CompletedGapMax: gap}
	}
	for _, tc := range []struct {
		name   string
		mod    func(h *Host)
		obs    *Observation
		budget float64
		key    string
		want   int64
	}{
		// No slabinfo: 320 B object + 128 B extensions + 8 B bucket = 456 B.
		{"floor from keepalive", nil, nil, 0, Established, 8400},
		{"floor 3600 without keepalive", func(h *Host) { h.KeepaliveTime = 0 }, nil, 0, Established, 3600},
		{"2x longest outbound idle", nil, obsWith(6000, 0, 0), 0, Established, 12000},
		{"2x longest completed gap, rounded to 10 min", nil, obsWith(0, 4501, 0), 0, Established, 9600},
		{"never above five days", nil, obsWith(400000, 0, 0), 0, Established, 432000},
		{"raise a too-short timeout", func(h *Host) { h.Sysctl[Established] = 600 }, nil, 0, Established, 8400},
		{"peak beats the budget", nil, nil, 0.1, Max, roundUp(2*300000, 1024)},
		{"peak from the observation", nil, obsWith(0, 0, 300000), 0, Max, roundUp(600000, 1024)},
		{"budget percent", nil, nil, 4, Max, int64(uint64(4<<30)*4/100/456) / 1024 * 1024},
		{"lower an oversized table", func(h *Host) { h.MemTotal = 1 << 30; h.Sysctl[Max] = 1 << 20 }, nil, 0, Max, int64(uint64(1<<30)*2/100/456) / 1024 * 1024},
		{"hash follows max", nil, nil, 0, Buckets, int64(uint64(4<<30)*2/100/456) / 1024 * 1024},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := base()
			if tc.mod != nil {
				tc.mod(h)
			}
			if tc.name == "peak beats the budget" {
				h.Sysctl[Count] = 300000
			}
			p := Recommend(h, tc.obs, Budget{MemPercent: tc.budget})
			it, ok := p.Item(tc.key)
			if !ok || it.Recommended != tc.want {
				t.Errorf("%s = %+v, want %d", tc.key, it, tc.want)
			}
			if tc.name == "peak beats the budget" && len(p.Warnings) == 0 {
				t.Error("a budget below the peak must warn")
			}
		})
	}
}

func TestObserverCompletedGaps(t *testing.T) {
	local := netip.MustParseAddr("192.0.2.10")
	peer := netip.MustParseAddr("198.51.100.5")
	bot := netip.MustParseAddr("203.0.113.9")
	t0 := time.Unix(10000, 0)
	o := NewObserver(432000, 300)
	// Scan 1: a pooled outbound connection idle 500 s, a legit client idle
	// 900 s, a bot idle 3000 s, a stalled entry (remaining 250 s) and one
	// with a remaining timeout above the reference.
	o.BeginScan(t0)
	o.Add(Flow{Proto: 6, Src: local, Dst: peer, SrcPort: 40000, DstPort: 5432, Outbound: true, Remaining: 432000 - 500})
	o.Add(Flow{Proto: 6, Src: peer, Dst: local, SrcPort: 50000, DstPort: 443, Remaining: 432000 - 900})
	o.Add(Flow{Proto: 6, Src: bot, Dst: local, SrcPort: 1, DstPort: 443, Remaining: 432000 - 3000})
	o.Add(Flow{Proto: 6, Src: bot, Dst: local, SrcPort: 2, DstPort: 443, Remaining: 250})
	o.Add(Flow{Proto: 6, Src: bot, Dst: local, SrcPort: 3, DstPort: 443, Remaining: 500000})
	o.EndScan(5)
	// Scan 2, 60 s later: the client sent a packet 10 s ago (idle 10), the
	// pool is still idle (560), the bot too (3060).
	o.BeginScan(t0.Add(60 * time.Second))
	o.Add(Flow{Proto: 6, Src: local, Dst: peer, SrcPort: 40000, DstPort: 5432, Outbound: true, Remaining: 432000 - 560})
	o.Add(Flow{Proto: 6, Src: peer, Dst: local, SrcPort: 50000, DstPort: 443, Remaining: 432000 - 10})
	o.Add(Flow{Proto: 6, Src: bot, Dst: local, SrcPort: 1, DstPort: 443, Remaining: 432000 - 3060})
	o.EndScan(7)
	obs := o.Observation()
	if obs.FirstCount != 5 || obs.LastCount != 7 || obs.GrowthPerSecond() != 2.0/60 {
		t.Errorf("counts %d -> %d, growth %g", obs.FirstCount, obs.LastCount, obs.GrowthPerSecond())
	}
	if obs.Scans != 2 || obs.Window != 60*time.Second || obs.PeakCount != 7 || obs.Skipped != 2 {
		t.Errorf("scans %d window %s peak %d skipped %d", obs.Scans, obs.Window, obs.PeakCount, obs.Skipped)
	}
	// The client's gap: idle 900 at scan 1, a packet at 50 s: the gap is at
	// most 900 + 60 - 10 = 950 s. The bot never completes one.
	if obs.CompletedGaps != 1 || obs.CompletedGapMax != 950 || obs.CompletedInboundGapMax != 950 {
		t.Errorf("completed gaps %d max %g inbound %g, want 1, 950, 950", obs.CompletedGaps, obs.CompletedGapMax, obs.CompletedInboundGapMax)
	}
	if obs.OutboundMax != 560 || obs.LegitIdleMax() != 950 {
		t.Errorf("outbound max %g legit %g", obs.OutboundMax, obs.LegitIdleMax())
	}
	if obs.Inbound.N != 2 || obs.Inbound.Max != 3060 || obs.InboundIdleOver(1000) != 1 {
		t.Errorf("inbound %+v over1000 %d", obs.Inbound, obs.InboundIdleOver(1000))
	}
	// Without Follow the same scans find no gap.
	o2 := NewObserver(432000, 300)
	o2.Follow = false
	for i, idle := range []uint32{900, 10} {
		o2.BeginScan(t0.Add(time.Duration(i) * 60 * time.Second))
		o2.Add(Flow{Proto: 6, Src: peer, Dst: local, SrcPort: 50000, DstPort: 443, Remaining: 432000 - idle})
		o2.EndScan(1)
	}
	if g := o2.Observation(); g.CompletedGaps != 0 || g.Inbound.N != 1 {
		t.Errorf("Follow=false: %+v", g)
	}
	// Add outside a scan is ignored, not a panic.
	o.Add(Flow{Remaining: 1})
	var nilObs *Observation
	if nilObs.LegitIdleMax() != 0 || nilObs.InboundIdleOver(1) != 0 {
		t.Error("nil observation")
	}
}

func TestStats(t *testing.T) {
	v := make([]float32, 100)
	for i := range v {
		v[i] = float32(100 - i) // 1..100, reversed
	}
	s := stats(v)
	if s.N != 100 || s.P50 != 50 || s.P90 != 90 || s.P99 != 99 || s.Max != 100 {
		t.Errorf("stats %+v", s)
	}
	if s := stats([]float32{7}); s.P50 != 7 || s.P99 != 7 {
		t.Errorf("one value: %+v", s)
	}
}

// BenchmarkObserverAdd backs the numbers in the maxTracked comment:
//
//	go test ./internal/tune -run '^$' -bench ObserverAdd -benchmem
func BenchmarkObserverAdd(b *testing.B) {
	src := netip.MustParseAddr("198.51.100.1")
	dst := netip.MustParseAddr("192.0.2.1")
	for _, follow := range []bool{true, false} {
		name := "follow"
		if !follow {
			name = "single-scan"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				o := NewObserver(432000, 300)
				o.Follow = follow
				o.BeginScan(time.Unix(0, 0))
				for i := range 262144 {
					o.Add(Flow{Proto: 6, Src: src, Dst: dst, SrcPort: uint16(i), DstPort: uint16(i >> 16), Remaining: 431000})
				}
				o.EndScan(262144)
			}
		})
	}
}

// The incident's growth, 249 -> 268 entries in 60 s: silent entries at 19/min
// level off at 19/60 x 8400 = 2660 under the new timeout (12 % of 21504),
// against 136,800 at 432000 s (the 16384 table fills instead).
func TestEstablishedLevelOff(t *testing.T) {
	h := readHost(t, fixture(t, "incident-4.9"))
	obs := &Observation{Scans: 2, Window: 60 * time.Second, FirstCount: 249, LastCount: 268, PeakCount: 268}
	p := Recommend(h, obs, Budget{})
	est, _ := p.Item(Established)
	for _, want := range []string{"19.0 entries/min", "level off at about 2660 entries", "12 % of the recommended max", "instead of 136800 at 432000 s", "(51x shorter)"} {
		if !strings.Contains(est.Reason, want) {
			t.Errorf("reason lacks %q: %s", want, est.Reason)
		}
	}
	if g := obs.GrowthPerSecond(); g < 0.316 || g > 0.317 {
		t.Errorf("growth %g/s", g)
	}
	if (&Observation{Scans: 1, FirstCount: 5, LastCount: 5}).GrowthPerSecond() != 0 {
		t.Error("one scan has no growth")
	}
}

// tune says what ctguard's own daemon needs at the recommended size in its
// worst case, and which table sizes the unit's memory limit fits.
func TestDaemonMemoryNote(t *testing.T) {
	p := Recommend(readHost(t, fixture(t, "host-4g")), nil, Budget{})
	mx, _ := p.Item(Max)
	want := fmt.Sprintf("ctguard run itself: at a full table of %d entries", mx.Recommended)
	found := false
	for _, n := range p.Notes {
		found = found || strings.Contains(n, want) && strings.Contains(n, "fits such tables up to about 870400 entries")
	}
	if !found {
		t.Fatalf("no daemon memory note %q in %q", want, p.Notes)
	}
	if n := daemonMemoryNote(262144); !strings.Contains(n, "about 91 MiB") {
		t.Fatalf("262144 entries: %s (measured: 91 MiB)", n)
	}
}
