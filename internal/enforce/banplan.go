package enforce

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/prefixset"
	"github.com/ctguard/ctguard/internal/store"
)

// allowChecker is what a ban plan asks the allowlist (*allow.List).
type allowChecker interface {
	// Check returns the entry that forbids banning p, if any.
	Check(p netip.Prefix) (allow.Entry, bool)
	// Session returns the open SSH session p covers, if any.
	Session(p netip.Prefix) (allow.Entry, bool)
}

// banPlan is what a batch of ban requests will change, decided before the
// kernel or the store is touched.
type banPlan struct {
	// Results has one entry per request, in request order: refusals
	// (Err), skips (CoveredBy), and for the accepted ones Refreshed,
	// Scoped, Session, Replaced and TTL.
	Results []BanResult
	// Change is the one kernel change: the accepted bans, and the deletes
	// of the prefix bans they replace or refresh.
	Change Change
	// Accepted lists the indexes of the requests that will be applied, in
	// the order they were planned (outer prefixes first).
	Accepted []int
	// TTL is the timeout each request gets (by request index): its own,
	// or the longer one an active ban already has.
	TTL []time.Duration
}

// planBans checks each request against the allowlist and the bans in force
// at now, without side effects: a request that is not canonical, has a bad
// timeout or hits the allowlist is refused; one that an active prefix ban
// (or an earlier request in the batch) covers is skipped; one that covers
// active prefix bans replaces them; one already banned is refreshed, never
// shortened unless ExactTTL. Outer prefixes are planned first, so that an
// inner request in the same batch is seen as covered.
func planBans(reqs []BanRequest, list allowChecker, active []store.Active, now time.Time) banPlan {
	plan := banPlan{Results: make([]BanResult, len(reqs)), TTL: make([]time.Duration, len(reqs))}
	// scopedOf maps every ban in force to whether it is scoped.
	scopedOf := make(map[netip.Prefix]bool, len(active)+len(reqs))
	expires := make(map[netip.Prefix]time.Time, len(active))
	var nets prefixset.Set[struct{}] // the prefix bans in force, for the overlap checks
	for _, b := range active {
		scopedOf[b.Prefix] = b.Scoped
		expires[b.Prefix] = b.Expires
		if !isHost(b.Prefix) {
			nets.Add(b.Prefix, struct{}{})
		}
	}
	order := make([]int, len(reqs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return reqs[a].Prefix.Bits() - reqs[b].Prefix.Bits() })

	inBatch := map[netip.Prefix]bool{}
	for _, i := range order {
		r := reqs[i]
		res := &plan.Results[i]
		p := r.Prefix
		res.Prefix = p
		switch {
		case !p.IsValid() || p.Masked() != p || p.Addr().Is4In6() || p.Addr().Zone() != "":
			res.Err = fmt.Errorf("ban %s: %w: not a canonical address or prefix", p, ErrBadTarget)
			continue
		case CheckTTL(r.TTL) != nil:
			res.Err = fmt.Errorf("ban %s: %w: %s %v", p, ErrBadTTL, r.TTL, CheckTTL(r.TTL))
			continue
		}
		if hit, ok := list.Check(p); ok {
			res.Err = &allow.Refusal{Target: p, Entry: hit}
			continue
		}
		if s, ok := list.Session(p); ok {
			res.Scoped, res.Session = true, s
		}
		if q, _, ok := nets.Covering(p); ok {
			res.CoveredBy = q
			continue
		}
		if inBatch[p] {
			res.CoveredBy = p // the same prefix earlier in this batch
			continue
		}
		inBatch[p] = true
		if !isHost(p) {
			for _, q := range nets.Inside(p) {
				res.Replaced = append(res.Replaced, q)
				plan.Change.Delete = append(plan.Change.Delete, Element{Prefix: q, Scoped: scopedOf[q]})
				delete(scopedOf, q)
				nets.Delete(q)
			}
		}
		ttl := r.TTL
		if scoped, ok := scopedOf[p]; ok {
			// Delete and re-add in the same batch: older kernels keep the
			// old timeout when an element is merely re-added (and the
			// scope may have changed).
			res.Refreshed = true
			plan.Change.Delete = append(plan.Change.Delete, Element{Prefix: p, Scoped: scoped})
			if left := expires[p].Sub(now); !r.ExactTTL && left > ttl {
				ttl = left.Round(time.Second) // a repeat ban never shortens one
			}
		}
		plan.Change.Add = append(plan.Change.Add, Element{Prefix: p, TTL: ttl, Scoped: res.Scoped})
		res.TTL, plan.TTL[i] = ttl, ttl
		scopedOf[p] = res.Scoped
		if !isHost(p) {
			nets.Add(p, struct{}{})
		}
		plan.Accepted = append(plan.Accepted, i)
	}
	return plan
}
