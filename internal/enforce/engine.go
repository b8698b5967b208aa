package enforce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/prefixset"
	"github.com/ctguard/ctguard/internal/sockets"
	"github.com/ctguard/ctguard/internal/store"
)

// Engine ties the store, the firewall, the allowlist and the purger
// together. Its methods are what the commands call: directly today, and
// through the daemon's control socket once the daemon owns the store (the
// method set is the control protocol: plain request and result structs).
type Engine struct {
	store       *store.Store
	fw          Firewall
	purger      Purger
	allowMu     sync.Mutex // guards allowC and the cache (SIGHUP replaces allowC while bans run)
	allowC      allow.Config
	allowMaxAge time.Duration
	allowCache  *allow.List
	allowAt     time.Time
	log         *slog.Logger
	now         func() time.Time

	mu      sync.Mutex // serialises changes: the store and the kernel move together
	tableID TableID
	// unrecorded: a ban reached the kernel but not the store (a failed
	// write); RecordUnrecorded repairs it.
	unrecorded bool
	dryRun     bool

	closerMu sync.Mutex
	closer   SocketCloser // nil: sockets are left alone

	warnMu sync.Mutex
	warned map[string]bool
}

// Config wires an Engine.
type Config struct {
	Store    *store.Store
	Firewall Firewall
	Purger   Purger // nil: bans still apply, purges report an error
	// Closer closes the banned peers' TCP sockets after the purge; nil
	// leaves them (the setting is off, or the kernel cannot).
	Closer SocketCloser
	Allow  allow.Config // sources of the allowlist; runtime entries come from the store
	// AllowMaxAge lets Allowlist reuse a list this young (the daemon under
	// attack: reading the SSH sessions walks every socket, and a victim can
	// hold 200,000 half-open ones). 0 re-reads every time (commands).
	AllowMaxAge time.Duration
	Log         *slog.Logger
	Now         func() time.Time
	// DryRun: the firewall, purger and closer are stand-ins that change
	// nothing; logs say "would".
	DryRun bool
}

const metaTableID = "nft_table_id"

// New returns an Engine.
func New(c Config) *Engine {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	e := &Engine{store: c.Store, fw: c.Firewall, purger: c.Purger, closer: c.Closer, allowC: c.Allow, allowMaxAge: c.AllowMaxAge,
		log: c.Log, now: c.Now, warned: map[string]bool{}, dryRun: c.DryRun}
	if v, err := c.Store.Meta(metaTableID); err == nil && v != "" {
		if id, err := strconv.ParseUint(v, 10, 64); err == nil {
			e.tableID = TableID(id)
		}
	}
	return e
}

// Allowlist loads the current allowlist (the sources are re-read each time:
// SSH sessions come and go).
func (e *Engine) Allowlist() (*allow.List, error) {
	now := e.now()
	e.allowMu.Lock()
	if e.allowCache != nil && e.allowMaxAge > 0 && now.Sub(e.allowAt) < e.allowMaxAge {
		l := e.allowCache
		e.allowMu.Unlock()
		return l, nil
	}
	e.allowMu.Unlock()
	rt, err := e.store.Allows(now)
	if err != nil {
		return nil, err
	}
	e.allowMu.Lock()
	cfg := e.allowC
	cfg.Static = slices.Clone(cfg.Static)
	e.allowMu.Unlock()
	for _, a := range rt {
		cfg.Static = append(cfg.Static, allow.Entry{Prefix: a.Prefix, Source: allow.Runtime, Detail: a.Note, Expires: a.Expires})
	}
	l, err := allow.Load(cfg, now)
	if err != nil {
		return nil, err
	}
	e.allowMu.Lock()
	e.allowCache, e.allowAt = l, now
	e.allowMu.Unlock()
	// The list is re-read for every ban and every daemon cycle: say each
	// distinct problem once, not every time.
	e.warnMu.Lock()
	for _, w := range l.Warnings {
		if !e.warned[w] {
			e.warned[w] = true
			e.log.Warn("allowlist source unavailable", "err", w)
		}
	}
	e.warnMu.Unlock()
	return l, nil
}

// SetAllowConfig replaces where the allowlist comes from (a config reload);
// the next Allowlist call reads the new sources.
func (e *Engine) SetAllowConfig(c allow.Config) {
	e.allowMu.Lock()
	e.allowC = c
	e.allowCache = nil
	e.allowMu.Unlock()
}

// forgetAllowlist drops the cached list (a runtime entry came or went).
func (e *Engine) forgetAllowlist() {
	e.allowMu.Lock()
	e.allowCache = nil
	e.allowMu.Unlock()
}

// ReconcileResult says what Reconcile or Start did.
type ReconcileResult struct {
	Rebuilt  bool
	Problem  string // why it rebuilt ("" at Start)
	Restored int    // elements re-applied
	Adopted  int    // kernel bans the store had no record of (Start)
	Took     time.Duration
}

// HistoryRetention is how long ended and expired ban records are kept (for
// repeat-offender counts and `ctguard why`) before Start prunes them.
const HistoryRetention = 30 * 24 * time.Hour

// Start recreates the own table atomically with every unexpired stored ban,
// after pruning records that ended more than HistoryRetention ago. It runs
// once when ctguard starts.
func (e *Engine) Start(ctx context.Context) (ReconcileResult, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.prune(); err != nil {
		return ReconcileResult{}, err
	}
	adopted, err := e.adopt(ctx)
	if err != nil {
		// Not fatal: the rebuild below still restores what the store holds.
		e.log.Error("could not read the bans already in the kernel; bans the store has no record of are dropped", "err", err)
	}
	r, err := e.rebuild(ctx, "")
	r.Adopted = adopted
	return r, err
}

// Prune deletes the ban records that ended more than HistoryRetention ago.
// Start does it; a long-running daemon calls it now and then, so the
// history stays bounded.
func (e *Engine) Prune() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.prune()
}

func (e *Engine) prune() error {
	n, err := e.store.Prune(e.now().Add(-HistoryRetention))
	if err != nil {
		return err
	}
	if n > 0 {
		e.log.Info("pruned old ban records", "records", n, "older_than", HistoryRetention)
	}
	return nil
}

// RecordUnrecorded adopts the kernel's bans that a failed store write left
// without a record, once the store writes again; it does nothing when no
// write failed since the last success. The daemon calls it every cycle.
func (e *Engine) RecordUnrecorded(ctx context.Context) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.unrecorded {
		return 0, nil
	}
	n, err := e.adopt(ctx)
	if err == nil {
		e.unrecorded = false
	}
	return n, err
}

// AdoptedReason marks a ban found in ctguard's kernel sets at start that the
// store had no record of (a new or damaged store): it is recorded with the
// time the kernel still kept it, so the rebuild keeps it.
const AdoptedReason = "adopted"

// adopt records the elements of ctguard's own kernel sets that the store has
// no record of at all. A record that ended (an unban whose kernel delete
// failed) is not revived: the store explains it. It only reads sets whose
// table has ctguard's exact structure.
func (e *Engine) adopt(ctx context.Context) (int, error) {
	problem, err := e.fw.Check(ctx, 0)
	if err != nil {
		return 0, err
	}
	if problem != "" {
		return 0, nil // no table, or not one ctguard built
	}
	elems, err := e.fw.Elements(ctx)
	if err != nil {
		return 0, err
	}
	now := e.now()
	var reqs []store.BanRequest
	var examples []string
	for _, el := range elems {
		if el.TTL < MinTTL {
			continue
		}
		if _, err := e.store.GetBan(el.Prefix); !errors.Is(err, store.ErrNotFound) {
			if err != nil {
				return 0, err
			}
			continue
		}
		reqs = append(reqs, store.BanRequest{Prefix: el.Prefix, Reason: AdoptedReason, TTL: el.TTL, Now: now, Scoped: el.Scoped, Origin: store.OriginAdopted,
			Evidence: fmt.Sprintf("found in ctguard's kernel set at start with %s left; the store had no record of it", el.TTL.Round(time.Second))})
		if len(examples) < 5 {
			examples = append(examples, el.Prefix.String())
		}
	}
	if len(reqs) == 0 {
		return 0, nil
	}
	if _, err := e.store.RecordBans(reqs); err != nil {
		return 0, err
	}
	e.log.Warn("adopted bans found in the kernel that the store had no record of (a new or damaged store?); they keep their remaining time",
		"bans", len(reqs), "examples", examples)
	return len(reqs), nil
}

// Reconcile checks the own table cheaply and, when it is missing or wrong,
// rebuilds it with every unexpired stored ban in one batch. Expired bans are
// not re-applied. The daemon calls it every loop; commands call it before
// they change anything.
func (e *Engine) Reconcile(ctx context.Context) (ReconcileResult, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	problem, err := e.fw.Check(ctx, e.tableID)
	if err != nil {
		return ReconcileResult{}, fmt.Errorf("reconcile: %w", err)
	}
	if problem == "" {
		return ReconcileResult{}, nil
	}
	e.log.Info("ctguard table needs rebuilding", "problem", problem)
	return e.rebuild(ctx, problem)
}

// apply makes a kernel change; when it fails because the table is broken
// (`nft flush ruleset` since the last check), it rebuilds the table from
// the store and tries once more, so a ban never waits for the next check.
// Callers hold e.mu.
func (e *Engine) apply(ctx context.Context, ch Change) error {
	err := e.fw.Apply(ctx, ch)
	if err == nil {
		return nil
	}
	problem, cerr := e.fw.Check(ctx, e.tableID)
	if cerr != nil || problem == "" {
		return err
	}
	e.log.Info("ctguard table needs rebuilding", "problem", problem)
	if _, rerr := e.rebuild(ctx, problem); rerr != nil {
		return fmt.Errorf("%w (and rebuilding the table: %w)", err, rerr)
	}
	return e.fw.Apply(ctx, ch)
}

func (e *Engine) rebuild(ctx context.Context, problem string) (ReconcileResult, error) {
	start := time.Now()
	now := e.now()
	active, err := e.store.ActiveIndex(now)
	if err != nil {
		return ReconcileResult{}, err
	}
	elems := KernelElements(active, now)
	id, err := e.fw.Setup(ctx, elems)
	if err != nil {
		return ReconcileResult{}, fmt.Errorf("restore %d bans: %w", len(elems), err)
	}
	e.tableID = id
	if err := e.store.SetMeta(metaTableID, strconv.FormatUint(uint64(id), 10)); err != nil {
		return ReconcileResult{}, err
	}
	r := ReconcileResult{Rebuilt: true, Problem: problem, Restored: len(elems), Took: time.Since(start)}
	e.log.Info("ctguard table rebuilt", "problem", problem, "restored", r.Restored, "took", r.Took)
	return r, nil
}

// KernelElements turns active ban records into set elements: remaining
// time as TTL, and prefixes inside another active prefix left out (interval
// sets refuse overlaps, and the outer one covers them anyway).
func KernelElements(active []store.Active, now time.Time) []Element {
	var nets prefixset.Set[struct{}] // the prefix bans, for the overlap checks
	for _, b := range active {
		if !isHost(b.Prefix) {
			nets.Add(b.Prefix, struct{}{})
		}
	}
	out := make([]Element, 0, len(active))
	for _, b := range active {
		ttl := b.Expires.Sub(now)
		if ttl <= 0 {
			continue
		}
		if !isHost(b.Prefix) {
			if _, _, ok := nets.Covering(b.Prefix); ok {
				continue
			}
		}
		out = append(out, Element{Prefix: b.Prefix, TTL: ttl, Scoped: b.Scoped})
	}
	return out
}

// BanRequest is one ban to apply.
type BanRequest struct {
	Prefix   netip.Prefix
	TTL      time.Duration
	Reason   string
	Evidence string
	// Origin is store.OriginManual for an operator's ban (never counted
	// toward automatic prefix bans), else the policy's (store.OriginAuto).
	Origin string
	// ExactTTL sets the timeout even when it shortens an active ban; by
	// default a repeat ban keeps the longer of the two.
	ExactTTL bool
}

// BanResult is what became of one BanRequest.
type BanResult struct {
	Prefix    netip.Prefix
	Err       error        `json:"-"` // refused or failed; nothing was changed for it (not serialisable: callers send its text)
	CoveredBy netip.Prefix // valid when skipped: an active prefix ban already covers it (itself: a duplicate in the batch)
	Refreshed bool         // it was already banned; the timeout was renewed
	// TTL is the timeout the ban got: the request's, or the longer one it
	// already had (see BanRequest.ExactTTL).
	TTL time.Duration
	// Scoped: the target covers Session, the peer of an open SSH session,
	// so the ban leaves the SSH ports open and the purge spares them.
	Scoped   bool
	Session  allow.Entry `json:"-"`
	Replaced []netip.Prefix
	Ban      store.Ban // the record after the ban, with the purge outcome
}

// Ban applies one ban; see BanMany.
func (e *Engine) Ban(ctx context.Context, r BanRequest) (BanResult, error) {
	rs, err := e.BanMany(ctx, []BanRequest{r})
	if len(rs) != 1 {
		return BanResult{Prefix: r.Prefix, Err: err}, err
	}
	if err == nil {
		err = rs[0].Err
	}
	return rs[0], err
}

// BanMany applies bans in one kernel change: each is checked against the
// allowlist, skipped if an active prefix ban covers it, replaces active
// prefix bans inside it, and refreshes its own timeout if already banned.
// Then every newly banned source's conntrack entries are purged and
// re-counted, and the outcome is recorded. The returned error is for the
// whole batch (kernel or store failure); per-request refusals are in the
// results.
func (e *Engine) BanMany(ctx context.Context, reqs []BanRequest) ([]BanResult, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	t0 := time.Now()
	list, err := e.Allowlist()
	if err != nil {
		return nil, fmt.Errorf("ban: allowlist: %w", err)
	}
	tAllow := time.Since(t0)
	activeList, err := e.store.ActiveIndex(now)
	if err != nil {
		return nil, err
	}
	plan := planBans(reqs, list, activeList, now)
	if len(plan.Change.Add) == 0 {
		return plan.Results, nil
	}
	return e.commitBans(ctx, reqs, plan, list, now, t0, tAllow)
}

// commitBans carries out a plan: the kernel change, the store records, the
// socket closing and the purge of each accepted ban, and their outcomes
// in the store and the log. t0 and tAllow time the batch.
func (e *Engine) commitBans(ctx context.Context, reqs []BanRequest, plan banPlan, list *allow.List, now, t0 time.Time, tAllow time.Duration) ([]BanResult, error) {
	results, ch, accepted := plan.Results, plan.Change, plan.Accepted
	reqs = slices.Clone(reqs)
	for _, i := range accepted {
		reqs[i].TTL = plan.TTL[i]
	}
	if err := e.apply(ctx, ch); err != nil {
		err = fmt.Errorf("ban: kernel change: %w", err)
		for _, i := range accepted {
			results[i].Err = err
		}
		return results, err
	}
	// Store writes are batched: one transaction each for the ends, the
	// records and the outcomes, whatever the batch size.
	var ended []netip.Prefix
	var endReasons []string
	recs := make([]store.BanRequest, 0, len(accepted))
	for _, i := range accepted {
		r := reqs[i]
		for _, q := range results[i].Replaced {
			ended = append(ended, q)
			endReasons = append(endReasons, "replaced by "+r.Prefix.String())
		}
		recs = append(recs, store.BanRequest{Prefix: r.Prefix, Reason: r.Reason, Evidence: r.Evidence, TTL: r.TTL, Now: now,
			Scoped: results[i].Scoped, Origin: r.Origin})
	}
	// A store that cannot write (a full disk) must not cost the defense:
	// the purge and the socket closing still run, the error is loud, and
	// the kernel-only bans stay liftable (Unban) and adoptable (Start).
	var storeErr error
	if len(ended) > 0 {
		if _, err := e.store.UpdateBans(ended, func(j int, b *store.Ban) { b.Ended, b.EndReason = now, endReasons[j] }); err != nil {
			storeErr = err
		}
	}
	if storeErr == nil {
		if _, err := e.store.RecordBans(recs); err != nil {
			storeErr = err
		}
	}
	// Close and purge after the element is in place: from now on the
	// source cannot create entries or connections, so what is deleted stays
	// deleted.
	type outcome struct {
		purged, remaining int
		err               error
	}
	outs := make([]outcome, len(accepted))
	ps := make([]netip.Prefix, len(accepted))
	var full, scoped []int // indexes into ps
	for k, i := range accepted {
		ps[k] = reqs[i].Prefix
		if results[i].Scoped {
			scoped = append(scoped, k)
		} else {
			full = append(full, k)
		}
	}
	tPre := time.Since(t0)
	defer func() {
		e.log.Debug("ban batch timing", "bans", len(ps), "allowlist", tAllow.Round(time.Millisecond),
			"kernel_and_store", (tPre - tAllow).Round(time.Millisecond), "close_purge_recount", (time.Since(t0) - tPre).Round(time.Millisecond))
	}()
	// Close the banned peers' sockets before the purge: a socket holds a
	// worker of the service, an entry only a table slot, and the purge of a
	// large prefix takes most of a second (the lab's Apache scenarios).
	closed, closeErr := e.closeSockets(ctx, ps, results, accepted, list)
	if bp, ok := e.purger.(BatchPurger); ok && len(full) > 1 {
		sub := pick(ps, full)
		purged, remaining, err := purgeMany(ctx, bp, sub)
		for j, k := range full {
			outs[k] = outcome{purged[j], remaining[j], err}
		}
	} else {
		for _, k := range full {
			outs[k].purged, outs[k].remaining, outs[k].err = e.purge(ctx, ps[k])
		}
	}
	if len(scoped) > 0 {
		purged, remaining, err := e.purgeKeeping(ctx, pick(ps, scoped))
		for j, k := range scoped {
			outs[k] = outcome{purged[j], remaining[j], err}
		}
	}
	if storeErr != nil {
		e.unrecorded = true
		e.log.Error("bans are in the kernel but the store could not record them: they last until their timeout, unban lifts them, a restart adopts them",
			"bans", len(ps), "err", storeErr)
		for k, i := range accepted {
			results[i].Ban = store.Ban{Prefix: ps[k], Reason: reqs[i].Reason, Evidence: reqs[i].Evidence, First: now, Last: now, Count: 1,
				Expires: now.Add(reqs[i].TTL), Scoped: results[i].Scoped, Purged: outs[k].purged, Remaining: outs[k].remaining, SocketsClosed: closed[k]}
		}
		return results, fmt.Errorf("ban: in the kernel, not recorded: %w", storeErr)
	}
	recorded, err := e.store.UpdateBans(ps, func(k int, b *store.Ban) {
		b.Purged, b.Remaining = outs[k].purged, outs[k].remaining
		if outs[k].err != nil {
			b.PurgeErr = outs[k].err.Error()
		}
		b.SocketsClosed, b.CloseErr = closed[k], ""
		b.PurgedTotal += outs[k].purged
		b.SocketsClosedTotal += closed[k]
		if closeErr != nil {
			b.CloseErr = closeErr.Error()
		}
	})
	if err != nil {
		return results, err
	}
	banned := "banned"
	if e.dryRun {
		banned = "would ban" // the purge and the closing only counted
	}
	for k, i := range accepted {
		results[i].Ban = recorded[k]
		if outs[k].err == nil && outs[k].remaining > 0 && !e.dryRun {
			// The drop runs before conntrack, so entries that survive the
			// purge (or came back) point at a path the ban does not see.
			e.log.Warn("entries remain after ban and purge", "prefix", ps[k], "remaining", outs[k].remaining, "purged", outs[k].purged)
		}
		e.log.Info(banned, "prefix", ps[k], "ttl", reqs[i].TTL, "reason", reqs[i].Reason,
			"refreshed", results[i].Refreshed, "replaced", len(results[i].Replaced), "scoped", results[i].Scoped,
			"purged", outs[k].purged, "remaining", outs[k].remaining, "purge_err", outs[k].err,
			"sockets_closed", closed[k], "close_err", closeErr)
	}
	return results, nil
}

// would turns a past-tense log message into what a dry run would have done.
func (e *Engine) would(msg string) string {
	if e.dryRun {
		return "would have " + msg
	}
	return msg
}

// DryRun reports whether the engine only pretends (a dry-run daemon).
func (e *Engine) DryRun() bool { return e.dryRun }

// ErrNoPurger is returned when no conntrack access was configured.
var ErrNoPurger = errors.New("no conntrack access: entries were not purged")

func (e *Engine) purge(ctx context.Context, p netip.Prefix) (purged, remaining int, err error) {
	if e.purger == nil {
		return 0, 0, ErrNoPurger
	}
	purged, err = e.purger.PurgeSource(ctx, p)
	if err != nil {
		return purged, 0, fmt.Errorf("purge %s: %w", p, err)
	}
	remaining, err = e.purger.CountSource(ctx, p)
	if err != nil {
		return purged, 0, fmt.Errorf("re-count %s: %w", p, err)
	}
	return purged, remaining, nil
}

// closeSockets closes the banned peers' TCP sockets (a scoped ban's on the
// non-SSH ports only) and returns the count per ban. A kernel that cannot
// close sockets turns the closer off with one warning.
func (e *Engine) closeSockets(ctx context.Context, ps []netip.Prefix, results []BanResult, accepted []int, list *allow.List) ([]int, error) {
	closed := make([]int, len(ps))
	e.closerMu.Lock()
	c := e.closer
	e.closerMu.Unlock()
	if c == nil || len(ps) == 0 {
		return closed, nil
	}
	ts := make([]sockets.Target, len(ps))
	keep := e.SSHPorts()
	for k, i := range accepted {
		ts[k] = sockets.Target{Prefix: ps[k]}
		if results[i].Scoped {
			ts[k].KeepTCPPorts = keep
		}
	}
	n, err := c.CloseSockets(ctx, ts, func(a netip.Addr) bool {
		_, allowed := list.Check(netip.PrefixFrom(a, a.BitLen()))
		return allowed
	})
	copy(closed, n)
	if errors.Is(err, sockets.ErrDestroyUnsupported) {
		e.DisableSocketClosing(err)
	}
	if err != nil {
		return closed, fmt.Errorf("close sockets: %w", err)
	}
	return closed, nil
}

// DisableSocketClosing turns socket closing off for good, saying why once.
func (e *Engine) DisableSocketClosing(why error) {
	e.closerMu.Lock()
	defer e.closerMu.Unlock()
	if e.closer != nil {
		e.closer = nil
		e.log.Warn("bans will not close the banned peers' sockets: the service keeps serving what they hold until it times them out", "why", why)
	}
}

// ClosesSockets reports whether bans close the banned peers' sockets.
func (e *Engine) ClosesSockets() bool {
	e.closerMu.Lock()
	defer e.closerMu.Unlock()
	return e.closer != nil
}

func pick(ps []netip.Prefix, idx []int) []netip.Prefix {
	out := make([]netip.Prefix, len(idx))
	for j, k := range idx {
		out[j] = ps[k]
	}
	return out
}

// SSHPorts are the ports scoped bans leave open (the allowlist's).
func (e *Engine) SSHPorts() []uint16 {
	e.allowMu.Lock()
	defer e.allowMu.Unlock()
	if len(e.allowC.SSHPorts) == 0 {
		return []uint16{22}
	}
	return slices.Clone(e.allowC.SSHPorts)
}

// purgeKeeping purges and re-counts the entries of scoped bans, leaving
// their TCP entries to the SSH ports alone: the operator's session lives
// there.
func (e *Engine) purgeKeeping(ctx context.Context, ps []netip.Prefix) (purged, remaining []int, err error) {
	purged, remaining = make([]int, len(ps)), make([]int, len(ps))
	kp, ok := e.purger.(KeepingPurger)
	if !ok {
		return purged, remaining, ErrNoKeepingPurger
	}
	keep := e.SSHPorts()
	p, err := kp.PurgeSourcesKeeping(ctx, ps, keep)
	if err != nil {
		return purged, remaining, fmt.Errorf("purge %d sources but their SSH sessions: %w", len(ps), err)
	}
	copy(purged, p)
	r, err := kp.CountSourcesKeeping(ctx, ps, keep)
	if err != nil {
		return purged, remaining, fmt.Errorf("re-count %d sources but their SSH sessions: %w", len(ps), err)
	}
	copy(remaining, r)
	return purged, remaining, nil
}

// ErrNoKeepingPurger: the purger cannot leave SSH sessions alone, so a
// scoped ban's entries were not purged.
var ErrNoKeepingPurger = errors.New("this conntrack access cannot spare SSH sessions: entries were not purged")

// purgeMany purges and re-counts disjoint prefixes in one pass each.
func purgeMany(ctx context.Context, bp BatchPurger, ps []netip.Prefix) (purged, remaining []int, err error) {
	purged, err = bp.PurgeSources(ctx, ps)
	if len(purged) != len(ps) {
		purged = make([]int, len(ps))
	}
	if err != nil {
		return purged, make([]int, len(ps)), fmt.Errorf("purge %d sources: %w", len(ps), err)
	}
	remaining, err = bp.CountSources(ctx, ps)
	if len(remaining) != len(ps) {
		remaining = make([]int, len(ps))
	}
	if err != nil {
		return purged, remaining, fmt.Errorf("re-count %d sources: %w", len(ps), err)
	}
	return purged, remaining, nil
}

// ErrNotBanned is returned by Unban for a prefix without an active ban.
var ErrNotBanned = errors.New("not banned")

// Unban lifts the active ban of exactly p. An element the kernel already
// expired is not an error.
func (e *Engine) Unban(ctx context.Context, p netip.Prefix) (store.Ban, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	b, err := e.store.GetBan(p)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Ban{}, err
	}
	if err != nil || !b.Active(now) {
		// The kernel may hold what the store does not (a store write that
		// failed, a full disk): what is in ctguard's sets can always be lifted.
		if lifted, kerr := e.unbanUnrecorded(ctx, p, now); kerr != nil || lifted.Prefix.IsValid() {
			return lifted, kerr
		}
		active, lerr := e.store.ActiveIndex(now)
		if lerr != nil {
			return store.Ban{}, lerr
		}
		for _, a := range active {
			if a.Prefix.Bits() < p.Bits() && a.Prefix.Contains(p.Addr()) {
				return store.Ban{}, fmt.Errorf("unban %s: %w itself, but covered by the ban of %s (unban that)", p, ErrNotBanned, a.Prefix)
			}
		}
		return store.Ban{}, fmt.Errorf("unban %s: %w", p, ErrNotBanned)
	}
	// Store first: if the kernel delete fails after it, the element is in
	// the kernel only, and the next unban (or the element's timeout) ends it;
	// the other order would leave a record that a restart re-applies.
	b, err = e.store.EndBan(p, now, "unban")
	if err != nil {
		return store.Ban{}, fmt.Errorf("unban %s: %w", p, err)
	}
	if err := e.apply(ctx, Change{Delete: []Element{{Prefix: p, Scoped: b.Scoped}}}); err != nil {
		return store.Ban{}, fmt.Errorf("unban %s: recorded as lifted, but the kernel still holds it (unban again): %w", p, err)
	}
	e.log.Info(e.would("unbanned"), "prefix", p)
	return b, nil
}

// UnbanResult is what became of one target of UnbanMany.
type UnbanResult struct {
	Prefix netip.Prefix
	Ban    store.Ban // the record, ended, when it was lifted
	Err    error     `json:"-"`
}

// UnbanMany lifts many bans in one kernel change and one store write
// (`unban --all`, `unban --from FILE`); all lifts every active ban. A target
// without an active ban gets ErrNotBanned in its result.
func (e *Engine) UnbanMany(ctx context.Context, ps []netip.Prefix, all bool) ([]UnbanResult, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	active, err := e.store.ActiveIndex(now)
	if err != nil {
		return nil, err
	}
	scoped := make(map[netip.Prefix]bool, len(active))
	for _, a := range active {
		scoped[a.Prefix] = a.Scoped
	}
	if all {
		ps = ps[:0:0]
		for _, a := range active {
			ps = append(ps, a.Prefix)
		}
	}
	out := make([]UnbanResult, len(ps))
	var lift []netip.Prefix
	var idx []int
	var ch Change
	for i, p := range ps {
		out[i].Prefix = p
		sc, ok := scoped[p]
		if !ok {
			out[i].Err = fmt.Errorf("unban %s: %w", p, ErrNotBanned)
			continue
		}
		delete(scoped, p) // a duplicate line lifts once
		lift = append(lift, p)
		idx = append(idx, i)
		ch.Delete = append(ch.Delete, Element{Prefix: p, Scoped: sc})
	}
	if len(lift) == 0 {
		return out, nil
	}
	// Store first, as Unban: a failed kernel delete is finished by the
	// next unban or the timeout, never undone by a restart.
	recs, err := e.store.UpdateBans(lift, func(_ int, b *store.Ban) { b.Ended, b.EndReason = now, "unban" })
	if err != nil {
		return out, fmt.Errorf("unban %d bans: %w", len(lift), err)
	}
	if err := e.apply(ctx, ch); err != nil {
		return out, fmt.Errorf("unban %d bans: recorded as lifted, but the kernel still holds them (unban again): %w", len(lift), err)
	}
	for k, i := range idx {
		out[i].Ban = recs[k]
	}
	e.log.Info(e.would("unbanned"), "bans", len(lift))
	return out, nil
}

// unbanUnrecorded deletes p from ctguard's sets when it is there although
// the store has no active record of it; a zero Ban when it is not there.
func (e *Engine) unbanUnrecorded(ctx context.Context, p netip.Prefix, now time.Time) (store.Ban, error) {
	elems, err := e.fw.Elements(ctx)
	if err != nil {
		return store.Ban{}, fmt.Errorf("unban %s: read the kernel's sets: %w", p, err)
	}
	i := slices.IndexFunc(elems, func(el Element) bool { return el.Prefix == p })
	if i < 0 {
		return store.Ban{}, nil
	}
	if err := e.fw.Apply(ctx, Change{Delete: []Element{elems[i]}}); err != nil {
		return store.Ban{}, fmt.Errorf("unban %s: %w", p, err)
	}
	e.log.Warn("unbanned a ban the store had no record of (a failed store write?)", "prefix", p, "left", elems[i].TTL.Round(time.Second))
	b := store.Ban{Prefix: p, Reason: "not recorded", Expires: now.Add(elems[i].TTL), Ended: now, EndReason: "unban", Scoped: elems[i].Scoped}
	if _, err := e.store.EndBan(p, now, "unban"); err != nil && !errors.Is(err, store.ErrNotFound) {
		e.log.Warn("could not record the unban", "prefix", p, "err", err)
	}
	return b, nil
}

// List returns the active bans, or every record when all is set.
func (e *Engine) List(all bool) ([]store.Ban, error) {
	if all {
		return e.store.Bans()
	}
	return e.store.ActiveBans(e.now())
}

// AllowResult is what Allow did.
type AllowResult struct {
	Entry  store.Allow
	Lifted []netip.Prefix // active bans that overlapped the new entry and were lifted
	// Kept are the rest of lifted wider bans, banned again around the entry.
	Kept []netip.Prefix
}

// Allow adds a runtime allowlist entry (ttl 0: permanent) and lifts every
// active ban that overlaps it, since no ban may cover an allowlisted
// address.
func (e *Engine) Allow(ctx context.Context, p netip.Prefix, ttl time.Duration, note string) (AllowResult, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	defer e.forgetAllowlist()
	now := e.now()
	if ttl < 0 {
		return AllowResult{}, fmt.Errorf("allow %s: %w: negative", p, ErrBadTTL)
	}
	a := store.Allow{Prefix: p, Note: note, Added: now}
	if ttl > 0 {
		a.Expires = now.Add(ttl)
	}
	active, err := e.store.ActiveIndex(now)
	if err != nil {
		return AllowResult{}, err
	}
	var lift []netip.Prefix
	var ch Change
	var rest []store.BanRequest
	for _, b := range active {
		if !b.Prefix.Overlaps(p) {
			continue
		}
		lift = append(lift, b.Prefix)
		ch.Delete = append(ch.Delete, Element{Prefix: b.Prefix, Scoped: b.Scoped})
		left := b.Expires.Sub(now)
		if b.Prefix.Bits() >= p.Bits() || left < MinTTL {
			continue
		}
		// A ban of a wider prefix: the rest of it stays banned.
		rec, err := e.store.GetBan(b.Prefix)
		if err != nil {
			return AllowResult{}, err
		}
		for _, q := range splitAround(b.Prefix, p) {
			ch.Add = append(ch.Add, Element{Prefix: q, TTL: left, Scoped: b.Scoped})
			rest = append(rest, store.BanRequest{Prefix: q, Reason: rec.Reason, TTL: left, Now: now, Scoped: b.Scoped, Origin: rec.Origin,
				Evidence: fmt.Sprintf("the rest of the ban of %s after %s was allowlisted; %s", b.Prefix, p, rec.Evidence)})
		}
	}
	if err := e.apply(ctx, ch); err != nil {
		return AllowResult{}, fmt.Errorf("allow %s: lift overlapping bans: %w", p, err)
	}
	for _, q := range lift {
		if _, err := e.store.EndBan(q, now, "allowlisted "+p.String()); err != nil {
			return AllowResult{}, err
		}
	}
	if len(rest) > 0 {
		if _, err := e.store.RecordBans(rest); err != nil {
			return AllowResult{}, err
		}
	}
	if err := e.store.PutAllow(a); err != nil {
		return AllowResult{}, err
	}
	kept := make([]netip.Prefix, len(rest))
	for i, r := range rest {
		kept[i] = r.Prefix
	}
	e.log.Info("allowlisted", "prefix", p, "ttl", ttl, e.would("lifted"), len(lift), "kept_banned", len(kept))
	return AllowResult{Entry: a, Lifted: lift, Kept: kept}, nil
}

// splitAround returns the prefixes that cover outer except inner (inner
// inside outer): one per bit between them, the halves not holding inner.
func splitAround(outer, inner netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for bits := outer.Bits() + 1; bits <= inner.Bits(); bits++ {
		in, _ := inner.Addr().Prefix(bits)
		// The sibling of in: flip the last bit of its network part.
		b := in.Addr().AsSlice()
		i := bits - 1
		b[i/8] ^= 0x80 >> (i % 8)
		a, _ := netip.AddrFromSlice(b)
		out = append(out, netip.PrefixFrom(a, bits))
	}
	return out
}

// PurgeResult is what Purge did.
type PurgeResult struct {
	Prefix    netip.Prefix
	Purged    int
	Remaining int
	Took      time.Duration
	// KeptSSH: the target covers an open SSH session's peer, so its
	// entries to the SSH ports were left alone.
	KeptSSH bool
}

// Purge deletes the conntrack entries of p now, without banning it, and
// re-counts. Allowlisted sources are refused: purging the operator's own
// SSH session's entries is never what was meant.
func (e *Engine) Purge(ctx context.Context, p netip.Prefix) (PurgeResult, error) {
	list, err := e.Allowlist()
	if err != nil {
		return PurgeResult{}, err
	}
	if hit, ok := list.Check(p); ok {
		return PurgeResult{}, &allow.Refusal{Target: p, Entry: hit}
	}
	start := time.Now()
	if _, ok := list.Session(p); ok {
		purged, remaining, err := e.purgeKeeping(ctx, []netip.Prefix{p})
		return PurgeResult{Prefix: p, Purged: purged[0], Remaining: remaining[0], Took: time.Since(start), KeptSSH: true}, err
	}
	purged, remaining, err := e.purge(ctx, p)
	return PurgeResult{Prefix: p, Purged: purged, Remaining: remaining, Took: time.Since(start)}, err
}

// Counters reads the kernel drop counters.
func (e *Engine) Counters(ctx context.Context) (Counters, error) { return e.fw.Counters(ctx) }

// RemoveAllow deletes a runtime allowlist entry.
func (e *Engine) RemoveAllow(p netip.Prefix) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	defer e.forgetAllowlist()
	return e.store.DeleteAllow(p)
}
