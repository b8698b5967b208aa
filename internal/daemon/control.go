package daemon

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/forecast"
	"github.com/ctguard/ctguard/internal/human"
	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/snapshot"
	"github.com/ctguard/ctguard/internal/store"
)

// Request is one control call: one JSON object per connection.
type Request struct {
	Op     string        `json:"op"`
	Target string        `json:"target,omitempty"`
	TTL    time.Duration `json:"ttl,omitempty"`
	Reason string        `json:"reason,omitempty"`
	All    bool          `json:"all,omitempty"`
	By     string        `json:"by,omitempty"`
	Prefix bool          `json:"prefix,omitempty"`
	N      int           `json:"n,omitempty"`
	// ExactTTL: the operator named the timeout, so it applies even when
	// it shortens an active ban.
	ExactTTL bool `json:"exact_ttl,omitempty"`
	// Targets are the addresses and prefixes of a bulk ban or unban
	// (ban-many, unban-many), in one kernel change.
	Targets []string `json:"targets,omitempty"`
}

// maxBulkTargets bounds one bulk request (a request is at most 1 MiB).
const maxBulkTargets = 50000

// Response carries a result or an error message.
type Response struct {
	Error  string          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	// DryRun: the daemon changes nothing in the kernel; what it reports as
	// done is what it would have done.
	DryRun bool `json:"dry_run,omitempty"`
}

// Serve listens on the control socket until ctx ends. The socket and its
// directory are root-only, and every peer's credentials are checked.
func (d *Daemon) Serve(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return fmt.Errorf("control socket %s: another ctguard is serving it", path)
	}
	os.Remove(path) // stale, from a daemon that died
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("control socket: %w", err)
	}
	go func() {
		<-ctx.Done()
		ln.Close()
		os.Remove(path)
	}()
	return acceptLoop(ctx, ln, d.log, func(c net.Conn) {
		if uc, ok := c.(*net.UnixConn); ok {
			d.handle(ctx, uc)
		} else {
			c.Close()
		}
	})
}

// acceptLoop hands every connection of ln to serve (each in its own
// goroutine) until ctx ends. An accept error never ends it: a daemon out
// of file descriptors (say a local flood of connections) waits and tries
// again, backing off from 5 ms to 1 s, and says so once per streak.
func acceptLoop(ctx context.Context, ln net.Listener, log *slog.Logger, serve func(net.Conn)) error {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("control socket: %w", err)
			}
			if delay == 0 {
				delay = 5 * time.Millisecond
				log.Warn("control socket: accept failed; retrying", "err", err)
			} else {
				delay = min(2*delay, time.Second)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		go serve(c)
	}
}

// maxRequest bounds a control request (a ban of thousands of targets
// fits many times over); requestTimeout bounds the time to send it.
const (
	maxRequest     = 1 << 20
	requestTimeout = 10 * time.Second
)

// errRequestTooLarge is what a client that sends more than maxRequest gets.
var errRequestTooLarge = fmt.Errorf("request larger than %d bytes", maxRequest)

// limitedReader reads at most n bytes, then fails with errRequestTooLarge.
type limitedReader struct {
	r io.Reader
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errRequestTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

func peerIsRoot(c *net.UnixConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var cred *syscall.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	return err == nil && cred != nil && cred.Uid == 0
}

func (d *Daemon) handle(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	enc := json.NewEncoder(c)
	if !peerIsRoot(c) {
		enc.Encode(Response{Error: "the control socket is root-only: run with sudo"})
		return
	}
	var req Request
	c.SetReadDeadline(time.Now().Add(requestTimeout))
	if err := json.NewDecoder(bufio.NewReader(&limitedReader{r: c, n: maxRequest})).Decode(&req); err != nil {
		enc.Encode(Response{Error: "bad request: " + err.Error()})
		return
	}
	c.SetReadDeadline(time.Time{})
	res, err := d.call(ctx, req)
	if err != nil {
		enc.Encode(Response{Error: err.Error()})
		return
	}
	b, err := json.Marshal(res)
	if err != nil {
		enc.Encode(Response{Error: err.Error()})
		return
	}
	enc.Encode(Response{Result: b, DryRun: d.dryRun})
}

// wireBanResult is enforce.BanResult with its error as text.
type wireBanResult struct {
	enforce.BanResult
	Err string `json:"error,omitempty"`
}

// wireUnbanResult is enforce.UnbanResult with its error as text.
type wireUnbanResult struct {
	enforce.UnbanResult
	Err string `json:"error,omitempty"`
}

func (d *Daemon) call(ctx context.Context, r Request) (any, error) {
	target := func() (netip.Prefix, error) {
		p, _, err := enforce.ParseTarget(r.Target)
		return p, err
	}
	switch r.Op {
	case "status":
		return d.Status(), nil
	case "top":
		return d.Top(r.By, r.Prefix, r.N), nil
	case "why":
		p, _, err := enforce.ParseTarget(r.Target)
		if err != nil {
			return nil, fmt.Errorf("why: %w", err)
		}
		return d.WhyPrefix(p)
	case "ban":
		p, err := target()
		if err != nil {
			return nil, err
		}
		res, err := d.eng.Ban(ctx, enforce.BanRequest{Prefix: p, TTL: r.TTL, Reason: r.Reason, Evidence: "manual ban over the control socket",
			Origin: store.OriginManual, ExactTTL: r.ExactTTL})
		w := wireBanResult{BanResult: res}
		if res.Err != nil {
			w.Err = res.Err.Error()
			err = nil
		}
		return w, err
	case "ban-many", "unban-many":
		if len(r.Targets) > maxBulkTargets {
			return nil, fmt.Errorf("%d targets in one request: at most %d", len(r.Targets), maxBulkTargets)
		}
		ps := make([]netip.Prefix, len(r.Targets))
		for i, t := range r.Targets {
			p, _, err := enforce.ParseTarget(t)
			if err != nil {
				return nil, fmt.Errorf("target %d: %w", i+1, err)
			}
			ps[i] = p
		}
		if r.Op == "unban-many" {
			res, err := d.eng.UnbanMany(ctx, ps, r.All)
			ws := make([]wireUnbanResult, len(res))
			for i, x := range res {
				ws[i] = wireUnbanResult{UnbanResult: x}
				if x.Err != nil {
					ws[i].Err = x.Err.Error()
				}
			}
			return ws, err
		}
		reqs := make([]enforce.BanRequest, len(ps))
		for i, p := range ps {
			reqs[i] = enforce.BanRequest{Prefix: p, TTL: r.TTL, Reason: r.Reason, Evidence: "manual bulk ban over the control socket",
				Origin: store.OriginManual, ExactTTL: r.ExactTTL}
		}
		res, err := d.eng.BanMany(ctx, reqs)
		ws := make([]wireBanResult, len(res))
		for i, x := range res {
			ws[i] = wireBanResult{BanResult: x}
			if x.Err != nil {
				ws[i].Err = x.Err.Error()
			}
		}
		return ws, err
	case "unban":
		p, err := target()
		if err != nil {
			return nil, err
		}
		return d.eng.Unban(ctx, p)
	case "list":
		return d.eng.List(r.All)
	case "allow":
		p, err := target()
		if err != nil {
			return nil, err
		}
		return d.eng.Allow(ctx, p, r.TTL, r.Reason)
	case "unallow":
		p, err := target()
		if err != nil {
			return nil, err
		}
		return nil, d.eng.RemoveAllow(p)
	case "allowlist":
		l, err := d.eng.Allowlist()
		if err != nil {
			return nil, err
		}
		return l.Entries(), nil
	case "purge":
		p, err := target()
		if err != nil {
			return nil, err
		}
		return d.eng.Purge(ctx, p)
	case "counters":
		return d.eng.Counters(ctx)
	case "reload":
		d.Reload()
		return "reload requested", nil
	}
	return nil, fmt.Errorf("unknown op %q", r.Op)
}

// StatusReply is the daemon's view for `status`.
type StatusReply struct {
	DryRun     bool               `json:"dry_run"`
	Stats      conntrack.Stats    `json:"stats"`
	Samples    []forecast.Sample  `json:"samples"`
	Snapshot   *snapshot.Snapshot `json:"snapshot"` // sources and prefixes left out
	Pressure   policy.Pressure    `json:"pressure"`
	Threshold  float64            `json:"threshold"`
	CycleAt    time.Time          `json:"cycle_at"`
	Cycles     uint64             `json:"cycles"`
	Counters   Counters           `json:"counters"`
	ActiveBans int                `json:"active_bans"`
	Buckets    int                `json:"buckets"`
	Kernel     string             `json:"kernel"`
	Timeouts   map[string]int     `json:"timeouts"`
	Reader     string             `json:"reader"`
	NumSources int                `json:"num_sources"`
	// Config is the configuration file the daemon runs with, or "the
	// built-in defaults".
	Config string `json:"config"`
	// Losing is set while the last cycle ran under high or critical
	// pressure and banned nothing.
	Losing *Losing `json:"losing,omitempty"`
	// Service is set while a listening socket's accept queue is full.
	Service *ServiceState `json:"service,omitempty"`
}

// Status is what `status` shows of a running daemon.
func (d *Daemon) Status() StatusReply {
	active, _ := d.st.ActiveIndex(time.Now())
	d.mu.Lock()
	defer d.mu.Unlock()
	r := StatusReply{
		DryRun: d.dryRun, Stats: d.stats, Samples: slices.Clone(d.samples), Pressure: d.result.Pressure,
		Threshold: d.result.Threshold, CycleAt: d.cycleAt, Cycles: d.cycles, Counters: d.counters,
		ActiveBans: len(active), Buckets: d.sys.Buckets, Kernel: d.sys.Kernel, Timeouts: d.sys.Timeouts,
		Reader: d.src.ReaderName(), Losing: d.losing, Service: d.svc.state(), Config: cmp.Or(d.cfgPath, "the built-in defaults"),
	}
	r.Counters.BansByReason = maps(d.counters.BansByReason)
	if d.snap != nil {
		s := *d.snap
		r.NumSources = max(s.NumSources, len(s.Sources))
		s.Sources, s.Prefixes = nil, nil
		s.Config.Local = nil
		r.Snapshot = &s
	}
	return r
}

func maps(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// TopReply is the daemon's last snapshot, ranked, for `top`.
type TopReply struct {
	Snapshot *snapshot.Snapshot `json:"snapshot"` // Sources or Prefixes holds the top N
	// How many sources and prefixes the scan found in all.
	NumSources  int `json:"num_sources"`
	NumPrefixes int `json:"num_prefixes"`
}

// MaxTopRows bounds a top reply (n = 0 asks for all): the snapshot lists
// at most the holders with two or more entries, which on a full table can
// still be 131,072.
const MaxTopRows = 10000

// Top returns the top n holders of the last scan (at most MaxTopRows).
func (d *Daemon) Top(by string, prefix bool, n int) TopReply {
	d.mu.Lock()
	snap := d.snap
	d.mu.Unlock()
	if snap == nil {
		return TopReply{}
	}
	s := *snap
	s.Config.Local = nil
	order := map[string]snapshot.Order{"held": snapshot.ByHeld, "idle": snapshot.ByIdle, "halfopen": snapshot.ByHalfOpen}[by]
	hs := slices.Clone(s.Sources)
	if prefix {
		hs = slices.Clone(s.Prefixes)
	}
	snapshot.SortBy(hs, order)
	if n <= 0 || n > MaxTopRows {
		n = MaxTopRows
	}
	if len(hs) > n {
		hs = hs[:n]
	}
	r := TopReply{Snapshot: &s, NumSources: max(s.NumSources, len(s.Sources)), NumPrefixes: max(s.NumPrefixes, len(s.Prefixes))}
	s.Sources, s.Prefixes = nil, nil
	if prefix {
		s.Prefixes = hs
	} else {
		s.Sources = hs
	}
	return r
}

// WhyReply explains everything the daemon knows about one address.
type WhyReply struct {
	Addr   netip.Addr   `json:"addr"`   // the address asked about (the prefix's first one for a CIDR)
	Target netip.Prefix `json:"target"` // what was asked about: an address (/32, /128) or a CIDR
	DryRun bool         `json:"dry_run"`
	// Offline: no daemon ran; the answer comes from one scan made for the
	// question and says what a cycle on it would do.
	Offline     bool            `json:"offline,omitempty"`
	Pressure    policy.Pressure `json:"pressure"`
	Threshold   float64         `json:"threshold"`
	Policy      policy.Config   `json:"policy"`
	Source      *Holding        `json:"source,omitempty"`
	Prefix      *Holding        `json:"prefix,omitempty"`
	Allowlisted []allow.Entry   `json:"allowlisted,omitempty"`
	// Sessions are open SSH sessions of this address: a ban leaves the SSH
	// ports open for it.
	Sessions []allow.Entry `json:"ssh_sessions,omitempty"`
	// Spared says why the last cycle did not ban it, when that cycle ran
	// under high or critical pressure and banned nothing.
	Spared  string      `json:"spared,omitempty"`
	Bans    []store.Ban `json:"bans,omitempty"` // records of this address and of prefixes holding it
	Events  []Event     `json:"events,omitempty"`
	CycleAt time.Time   `json:"cycle_at"`
	// Verdict is the answer in one line: banned (by whom, why, how much
	// longer), or why not.
	Verdict string `json:"verdict"`
}

// Holding is what one source or prefix held at the last scan, and its score.
type Holding struct {
	Key     netip.Prefix    `json:"key"`
	Counts  snapshot.Counts `json:"counts"`
	Members uint32          `json:"members,omitempty"`
	Score   float64         `json:"score"`
	// Growth is what it gained since the scan the growth rule compared
	// with (zero window: no such scan yet).
	Growth policy.Growth `json:"growth"`
}

// Why gathers the evidence, thresholds, allowlist hits and ban history of a.
func (d *Daemon) Why(a netip.Addr) (WhyReply, error) {
	return d.WhyPrefix(netip.PrefixFrom(a, a.BitLen()))
}

// WhyPrefix explains an address or a CIDR: for a CIDR, the holding of the
// grouping prefix that contains it (or the sum of those inside it, for a
// wider one), every ban and decision that overlaps it.
func (d *Daemon) WhyPrefix(p netip.Prefix) (WhyReply, error) {
	d.mu.Lock()
	x := explainIn{target: p, dryRun: d.dryRun, pressure: d.result.Pressure, threshold: d.result.Threshold, policy: d.cfg.Policy,
		cycleAt: d.cycleAt, snap: d.snap, list: d.allowed, earlier: d.earlier, losing: d.losing}
	for _, e := range d.events {
		if e.Target.Overlaps(p.Masked()) {
			x.events = append(x.events, e)
		}
	}
	d.mu.Unlock()
	bans, err := d.st.Bans()
	if err != nil {
		return WhyReply{Addr: p.Addr(), Target: p.Masked()}, err
	}
	x.bans = bans
	return explain(x, time.Now()), nil
}

// explainIn is what an explanation is made of: the daemon's last cycle,
// or one scan made for the question (Offline).
type explainIn struct {
	target          netip.Prefix
	dryRun, offline bool
	pressure        policy.Pressure
	threshold       float64
	policy          policy.Config
	cycleAt         time.Time
	snap            *snapshot.Snapshot
	list            *allow.List
	earlier         *policy.Held
	losing          *Losing
	events          []Event
	bans            []store.Ban
}

func explain(x explainIn, now time.Time) WhyReply {
	p := x.target.Masked()
	a := p.Addr()
	r := WhyReply{Addr: a, Target: p, DryRun: x.dryRun, Offline: x.offline, Pressure: x.pressure, Threshold: x.threshold,
		Policy: x.policy, CycleAt: x.cycleAt}
	for _, e := range x.events {
		if e.Target.Overlaps(p) {
			r.Events = append(r.Events, e)
		}
	}
	if len(r.Events) > 50 {
		r.Events = r.Events[len(r.Events)-50:]
	}
	cfg := x.policy
	if snap := x.snap; snap != nil {
		in := policy.Input{Earlier: x.earlier}
		if p.IsSingleIP() {
			for i := range snap.Sources {
				if h := &snap.Sources[i]; h.Key.Addr() == a {
					r.Source = &Holding{Key: h.Key, Counts: h.Counts, Score: cfg.Score(&h.Counts), Growth: in.GrowthOf(h)}
					break
				}
			}
		}
		var sum *Holding
		for i := range snap.Prefixes {
			h := &snap.Prefixes[i]
			switch {
			case h.Key.Bits() <= p.Bits() && h.Key.Contains(a):
				r.Prefix = &Holding{Key: h.Key, Counts: h.Counts, Members: h.Members, Score: cfg.Score(&h.Counts), Growth: in.GrowthOf(h)}
			case h.Key.Bits() > p.Bits() && p.Contains(h.Key.Addr()):
				// A CIDR wider than the grouping: the sum of what is inside.
				if sum == nil {
					sum = &Holding{Key: p}
				}
				sum.Counts.Merge(&h.Counts)
				sum.Members += h.Members
			}
			if r.Prefix != nil {
				break
			}
		}
		if r.Prefix == nil && sum != nil {
			sum.Score = cfg.Score(&sum.Counts)
			r.Prefix = sum
		}
	}
	if x.losing != nil {
		for _, s := range x.losing.Spared {
			if s.Target.Overlaps(p) {
				r.Spared = s.Why
			}
		}
	}
	if x.list != nil {
		for _, e := range x.list.Entries() {
			if !e.Prefix.Overlaps(p) {
				continue
			}
			if e.Source == allow.SSH {
				r.Sessions = append(r.Sessions, e)
			} else {
				r.Allowlisted = append(r.Allowlisted, e)
			}
		}
	}
	for _, b := range x.bans {
		if b.Prefix.Overlaps(p) {
			r.Bans = append(r.Bans, b)
		}
	}
	r.Verdict = verdict(&r, now)
	return r
}

// Offline is what why needs when no daemon runs: one scan made for the
// question, the table's size, the stored bans, the allowlist and the
// configured policy.
type Offline struct {
	Snapshot   *snapshot.Snapshot
	Count, Max int
	Policy     policy.Config
	Bans       []store.Ban // every record, the history too
	Allowed    *allow.List
}

// ExplainOffline answers why from one scan: the policy decides on it as a
// cycle of the daemon would, without a growth history or a rate (so the
// growth rule and the time-to-full pressure do not apply), and the answer
// says what that cycle would ban.
func ExplainOffline(o Offline, target netip.Prefix) WhyReply {
	now := time.Now()
	var active []store.Active
	for _, b := range o.Bans {
		if b.Active(now) {
			active = append(active, store.Active{Prefix: b.Prefix, Expires: b.Expires, Scoped: b.Scoped, Manual: b.Origin == store.OriginManual})
		}
	}
	v4, v6 := snapshot.DefaultV4Bits, snapshot.DefaultV6Bits
	if o.Snapshot != nil {
		v4, v6 = o.Snapshot.Config.V4Bits, o.Snapshot.Config.V6Bits
	}
	idx := newBanIndex(active, v4, v6)
	history := map[netip.Prefix]policy.Offence{}
	for _, b := range o.Bans {
		history[b.Prefix] = policy.Offence{Count: b.Count, Last: b.Last}
	}
	in := policy.Input{Now: now, Snapshot: o.Snapshot, Count: o.Count, Max: o.Max,
		Banned: idx.covered, BannedIn: idx.hostsIn, BannedGroupsIn: idx.groupsIn,
		History: func(p netip.Prefix) policy.Offence { return history[p] }}
	if o.Allowed != nil {
		in.Allowed = func(p netip.Prefix) (string, bool) {
			e, ok := o.Allowed.Check(p)
			return e.String(), ok
		}
	}
	res := policy.Decide(in, o.Policy)
	x := explainIn{target: target, offline: true, pressure: res.Pressure, threshold: res.Threshold, policy: o.Policy,
		snap: o.Snapshot, list: o.Allowed, bans: o.Bans}
	if o.Snapshot != nil {
		x.cycleAt = o.Snapshot.Time
	}
	for _, dec := range res.Bans {
		x.events = append(x.events, Event{Time: now, Target: dec.Target, Action: "would-ban", Detail: "a cycle on this scan", Decision: dec})
	}
	if len(res.Spared) > 0 {
		x.losing = &Losing{Spared: res.Spared}
	}
	return explain(x, now)
}

func pluralBans(n int) string {
	if n == 1 {
		return "1 ban"
	}
	return fmt.Sprintf("%d bans", n)
}

// verdict is why's last line: banned, or why not.
func verdict(r *WhyReply, now time.Time) string {
	banned := "BANNED"
	if r.DryRun {
		banned = "would be banned (dry run)"
	}
	inside := 0
	for _, b := range r.Bans {
		if b.Active(now) && r.Target.IsValid() && b.Prefix.Bits() > r.Target.Bits() {
			inside++ // a ban of a part of the CIDR asked about
			continue
		}
		if b.Active(now) {
			who := "by the policy"
			switch b.Origin {
			case store.OriginManual:
				who = "by an operator"
			case store.OriginAdopted:
				who = "adopted from the kernel"
			}
			return fmt.Sprintf("%s: %s %s (%s), for %s more", banned, b.Prefix, who, b.Reason, human.Duration(b.Expires.Sub(now)))
		}
	}
	if inside > 0 {
		return fmt.Sprintf("partly banned: %s inside %s, not the whole", pluralBans(inside), r.Target)
	}
	if r.Offline {
		for _, e := range r.Events {
			if e.Action == "would-ban" && e.Target.Contains(r.Target.Addr()) && e.Target.Bits() <= r.Target.Bits() {
				d := e.Decision
				return fmt.Sprintf("would be banned: a cycle on this scan bans %s (%s, score %.1f at %s pressure, for %s)",
					d.Target, d.Reason, d.Score, d.Pressure, human.Duration(d.TTL))
			}
		}
	}
	if len(r.Allowlisted) > 0 {
		if r.Target.IsValid() && !r.Target.IsSingleIP() {
			return "never banned as a whole: it holds allowlisted " + r.Allowlisted[0].String()
		}
		return "never banned: allowlisted (" + r.Allowlisted[0].String() + ")"
	}
	if r.Target.IsValid() && !r.Target.IsSingleIP() {
		if r.Prefix == nil {
			return "not banned: nothing inside it held entries at the last scan"
		}
		sources := "sources"
		if r.Prefix.Members == 1 {
			sources = "source"
		}
		return fmt.Sprintf("not banned: %s holds %d entries from %d %s, score %.1f (a prefix is banned when several of its members are, or when it scores %.0f x the threshold %.0f with %d scoring members)",
			r.Prefix.Key, r.Prefix.Counts.Entries, r.Prefix.Members, sources, r.Prefix.Score, r.Policy.PrefixFactor, r.Threshold, r.Policy.PrefixMinSources)
	}
	if r.CycleAt.IsZero() {
		return "not banned: no scan yet"
	}
	if r.Spared != "" {
		return "not banned: " + r.Spared
	}
	if r.Source == nil {
		return "not banned: it held no entries (or a single one) at the last scan"
	}
	c := r.Source.Counts
	switch {
	case c.Entries < r.Policy.MinEntries:
		return fmt.Sprintf("not banned: it holds %d entries, under min_entries %d", c.Entries, r.Policy.MinEntries)
	case r.Source.Score < r.Threshold:
		why := fmt.Sprintf("not banned: score %.1f under the threshold %.0f at %s pressure", r.Source.Score, r.Threshold, r.Pressure)
		if r.Prefix != nil && r.Prefix.Members > 1 {
			why += fmt.Sprintf("; its prefix %s (%d sources, score %.1f) did not reach a prefix rule", r.Prefix.Key, r.Prefix.Members, r.Prefix.Score)
		}
		return why
	}
	return fmt.Sprintf("due to be banned: score %.1f reaches the threshold %.0f (the next cycle bans it unless a cap or the allowlist stops it)", r.Source.Score, r.Threshold)
}

// ErrNoDaemon means no daemon answers on the control socket.
var ErrNoDaemon = errors.New("no ctguard daemon is running")

// Client talks to a running daemon.
type Client struct {
	Path   string
	dryRun atomic.Bool // the last reply came from a dry-run daemon
}

// DryRun reports whether the daemon that answered last runs in dry-run
// mode (its bans, purges and unbans only say what they would do).
func (c *Client) DryRun() bool { return c.dryRun.Load() }

// ErrOtherNamespace means the daemon answering on the socket runs in
// another network namespace: the socket is a file, files are shared
// across namespaces, and that daemon's table and bans are not this one's.
var ErrOtherNamespace = errors.New("the ctguard daemon on this socket runs in another network namespace")

// ErrSocketDenied means the caller may not use the control socket.
var ErrSocketDenied = errors.New("permission denied on the control socket (it is root's: run with sudo)")

// Dial returns a client if a daemon of this network namespace answers on
// path; else ErrNoDaemon, ErrSocketDenied or ErrOtherNamespace.
func Dial(path string) (*Client, error) {
	c, err := net.DialTimeout("unix", path, time.Second)
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		return nil, ErrSocketDenied
	}
	if err != nil {
		return nil, ErrNoDaemon
	}
	defer c.Close()
	if pid, other := otherNamespace(c.(*net.UnixConn)); other {
		return nil, fmt.Errorf("%w (pid %d)", ErrOtherNamespace, pid)
	}
	return &Client{Path: path}, nil
}

// otherNamespace reports whether the peer of c (the daemon, by
// SO_PEERCRED) lives in another network namespace than the caller. Unknown
// counts as the same: a pid namespace that hides the peer must not lock
// the operator out of the daemon.
func otherNamespace(c *net.UnixConn) (int, bool) {
	pid := enforce.PeerPID(c)
	if pid <= 0 {
		return 0, false
	}
	theirs, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	ours, err2 := os.Readlink("/proc/self/ns/net")
	if err1 != nil || err2 != nil {
		return pid, false
	}
	return pid, theirs != ours
}

// Call sends one request and decodes the result into out (may be nil).
func (c *Client) Call(ctx context.Context, req Request, out any) error {
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, "unix", c.Path)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoDaemon, err)
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	} else {
		conn.SetDeadline(time.Now().Add(2 * time.Minute))
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	c.dryRun.Store(resp.DryRun)
	if resp.Error != "" {
		return errors.New(resp.Error)
	}
	if out != nil && len(resp.Result) > 0 {
		return json.Unmarshal(resp.Result, out)
	}
	return nil
}

// Ban asks the daemon to ban.
func (c *Client) Ban(ctx context.Context, r enforce.BanRequest) (enforce.BanResult, error) {
	var w wireBanResult
	err := c.Call(ctx, Request{Op: "ban", Target: r.Prefix.String(), TTL: r.TTL, Reason: r.Reason, ExactTTL: r.ExactTTL}, &w)
	if err != nil {
		return enforce.BanResult{Prefix: r.Prefix, Err: err}, err
	}
	res := w.BanResult
	if w.Err != "" {
		res.Err = errors.New(w.Err)
	}
	return res, res.Err
}

// BanMany asks the daemon to ban many targets in one kernel change; they
// must share one timeout and reason (the command line's bulk ban).
func (c *Client) BanMany(ctx context.Context, reqs []enforce.BanRequest) ([]enforce.BanResult, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	r := Request{Op: "ban-many", TTL: reqs[0].TTL, Reason: reqs[0].Reason, ExactTTL: reqs[0].ExactTTL}
	for _, q := range reqs {
		if q.TTL != r.TTL || q.Reason != r.Reason || q.ExactTTL != r.ExactTTL {
			return nil, errors.New("a bulk ban through the daemon takes one timeout and one reason")
		}
		r.Targets = append(r.Targets, q.Prefix.String())
	}
	var ws []wireBanResult
	err := c.Call(ctx, r, &ws)
	out := make([]enforce.BanResult, len(ws))
	for i, w := range ws {
		out[i] = w.BanResult
		if w.Err != "" {
			out[i].Err = errors.New(w.Err)
		}
	}
	return out, err
}

// UnbanMany asks the daemon to lift many bans (all: every active one).
func (c *Client) UnbanMany(ctx context.Context, ps []netip.Prefix, all bool) ([]enforce.UnbanResult, error) {
	r := Request{Op: "unban-many", All: all}
	for _, p := range ps {
		r.Targets = append(r.Targets, p.String())
	}
	var ws []wireUnbanResult
	err := c.Call(ctx, r, &ws)
	out := make([]enforce.UnbanResult, len(ws))
	for i, w := range ws {
		out[i] = w.UnbanResult
		if w.Err != "" {
			out[i].Err = errors.New(w.Err)
		}
	}
	return out, err
}

// Unban asks the daemon to unban.
func (c *Client) Unban(ctx context.Context, p netip.Prefix) (store.Ban, error) {
	var b store.Ban
	return b, c.Call(ctx, Request{Op: "unban", Target: p.String()}, &b)
}

// List returns the daemon's ban list.
func (c *Client) List(all bool) ([]store.Ban, error) {
	var bs []store.Ban
	return bs, c.Call(context.Background(), Request{Op: "list", All: all}, &bs)
}

// Allow adds a runtime allowlist entry through the daemon.
func (c *Client) Allow(ctx context.Context, p netip.Prefix, ttl time.Duration, note string) (enforce.AllowResult, error) {
	var r enforce.AllowResult
	return r, c.Call(ctx, Request{Op: "allow", Target: p.String(), TTL: ttl, Reason: note}, &r)
}

// RemoveAllow removes a runtime allowlist entry through the daemon.
func (c *Client) RemoveAllow(p netip.Prefix) error {
	return c.Call(context.Background(), Request{Op: "unallow", Target: p.String()}, nil)
}

// Allowlist returns the daemon's allowlist.
func (c *Client) Allowlist() (*allow.List, error) {
	var es []allow.Entry
	if err := c.Call(context.Background(), Request{Op: "allowlist"}, &es); err != nil {
		return nil, err
	}
	return allow.NewList(es), nil
}

// Purge asks the daemon to purge p's entries.
func (c *Client) Purge(ctx context.Context, p netip.Prefix) (enforce.PurgeResult, error) {
	var r enforce.PurgeResult
	return r, c.Call(ctx, Request{Op: "purge", Target: p.String()}, &r)
}

// Counters returns the drop counters of ctguard's table.
func (c *Client) Counters(ctx context.Context) (enforce.Counters, error) {
	var r enforce.Counters
	return r, c.Call(ctx, Request{Op: "counters"}, &r)
}
