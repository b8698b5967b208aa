package crowdsec

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// PullStatus is the state of the pull side.
type PullStatus struct {
	Enabled bool `json:"enabled"`
	linkState
	// Pulls counts the stream requests that succeeded; LastStartup is the
	// last full one (startup=true).
	Pulls       uint64    `json:"pulls"`
	LastStartup time.Time `json:"last_startup,omitzero"`
	// Held decisions, on Prefixes distinct prefixes (handed to Apply).
	Held     int `json:"held"`
	Prefixes int `json:"prefixes"`
	// Received decisions (in the new arrays); Applied and Lifted are the
	// prefixes handed to Apply as new and as deleted.
	Received uint64 `json:"received"`
	Applied  uint64 `json:"applied"`
	Lifted   uint64 `json:"lifted"`
	// Skipped counts the decisions not applied, by reason.
	Skipped SkipCounts `json:"skipped"`
	// Masked ranges had host bits set: they were applied masked.
	Masked uint64 `json:"masked"`
	// Dropped decisions did not fit in max_decisions.
	Dropped uint64 `json:"dropped"`
}

// SkipCounts counts the decisions not applied, by reason.
type SkipCounts struct {
	NotBan    uint64 `json:"not_ban"`   // a type other than ban (captcha, ...)
	Scope     uint64 `json:"scope"`     // a scope other than Ip and Range
	Simulated uint64 `json:"simulated"` // made in simulation mode
	Own       uint64 `json:"own"`       // this host's own (own_scenarios)
	Origin    uint64 `json:"origin"`    // filtered by origins
	Scenario  uint64 `json:"scenario"`  // filtered by scenarios / exclude_scenarios
	Invalid   uint64 `json:"invalid"`   // a value, duration or shape that does not parse
	Expired   uint64 `json:"expired"`   // no time left
	TooBroad  uint64 `json:"too_broad"` // broader than min_prefix_v4 / min_prefix_v6
}

func (s *SkipCounts) add(why skip, n uint64) {
	switch why {
	case skipType:
		s.NotBan += n
	case skipScope:
		s.Scope += n
	case skipSimulated:
		s.Simulated += n
	case skipOwn:
		s.Own += n
	case skipOrigin:
		s.Origin += n
	case skipScenario:
		s.Scenario += n
	case skipInvalid:
		s.Invalid += n
	case skipExpired:
		s.Expired += n
	case skipTooBroad:
		s.TooBroad += n
	}
}

// held is a decision held, with when it ends.
type held struct {
	d    Decision
	ends time.Time
}

// puller is the bouncer side: the stream loop and the decisions it holds,
// by id, and per prefix the one handed to the Applier.
type puller struct {
	c     *Client
	key   string
	apply Applier
	f     filter

	// Written by the loop with mu held; read by the loop without it.
	mu        sync.Mutex
	held      map[int64]held
	byPrefix  map[netip.Prefix]map[int64]struct{}
	forwarded map[netip.Prefix]held
	synced    bool // a startup stream went through in this process
	st        PullStatus
}

func newPuller(c *Client, key string, apply Applier) *puller {
	return &puller{
		c:         c,
		key:       key,
		apply:     apply,
		f:         newFilter(&c.cfg),
		held:      map[int64]held{},
		byPrefix:  map[netip.Prefix]map[int64]struct{}{},
		forwarded: map[netip.Prefix]held{},
		st:        PullStatus{Enabled: true},
	}
}

func (p *puller) run(ctx context.Context) {
	startup := true
	for {
		err := p.pullOnce(ctx, startup)
		if ctx.Err() != nil {
			return
		}
		wait := p.c.cfg.PullInterval
		if err != nil {
			msg := p.c.redact(err.Error())
			p.mu.Lock()
			p.st.Failures++
			n := p.st.Failures
			p.st.LastError, p.st.LastErrorAt = msg, p.c.now()
			p.mu.Unlock()
			// The LAPI may count a pull that failed here as done: the
			// next one takes the whole list again.
			startup = true
			wait = p.c.backoff(n, p.c.cfg.PullInterval)
			p.c.log.Warn("decisions stream failed", "err", msg, "failures", n, "retry_in", wait.Round(time.Millisecond))
		} else {
			startup = false
		}
		if !sleep(ctx, wait) {
			return
		}
	}
}

// batch collects one stream answer before it is committed.
type batch struct {
	p       *puller
	startup bool
	limit   int

	news    []Decision
	newIDs  map[int64]int
	delIDs  []int64
	delPfx  map[netip.Prefix]Decision // startup: what the LAPI expired
	skipped [numSkips]uint64
	recv    uint64
	masked  uint64
	dropped uint64
	reports []string
}

const maxReports = 5

func (b *batch) report(format string, a ...any) {
	if len(b.reports) < maxReports {
		b.reports = append(b.reports, fmt.Sprintf(format, a...))
	}
}

func (b *batch) visit(deleted bool, w wireDecision, bad error) {
	if deleted {
		if bad != nil {
			return
		}
		if !b.startup {
			if _, ok := b.p.held[w.ID]; ok {
				b.delIDs = append(b.delIDs, w.ID)
			}
			return
		}
		if b.p.synced || len(b.delPfx) >= b.limit {
			return
		}
		if d, why, _, _ := b.p.f.translate(w); why == keep || why == skipExpired {
			d.Remaining = 0
			b.delPfx[d.Prefix] = d
		}
		return
	}
	b.recv++
	if bad != nil {
		b.skipped[skipInvalid]++
		b.report("a decision of the wrong shape: %v", bad)
		return
	}
	d, why, masked, err := b.p.f.translate(w)
	if why != keep {
		b.skipped[why]++
		if err != nil {
			b.report("decision %d (%s, %s): %v", w.ID, clip(w.Origin), clip(w.Scenario), err)
		}
		return
	}
	if masked {
		b.masked++
		b.report("decision %d (%s, %s): range %s has host bits set: applied as %s", w.ID, clip(w.Origin), clip(w.Scenario), clip(w.Value), d.Prefix)
	}
	if i, ok := b.newIDs[d.ID]; ok {
		b.news[i] = d
		return
	}
	if len(b.news) >= b.limit {
		b.dropped++
		return
	}
	b.newIDs[d.ID] = len(b.news)
	b.news = append(b.news, d)
}

// pullOnce makes one stream request and commits it.
func (p *puller) pullOnce(ctx context.Context, startup bool) error {
	ctx, cancel := context.WithTimeout(ctx, p.c.cfg.PullTimeout)
	defer cancel()
	q := url.Values{
		"startup": {strconv.FormatBool(startup)},
		"scopes":  {"ip,range"},
		// One entry per decision, not per value: a deletion is only a
		// deletion when no other decision holds the prefix.
		"dedup": {"false"},
	}
	if len(p.c.cfg.Origins) > 0 {
		q.Set("origins", strings.Join(p.c.cfg.Origins, ","))
	}
	resp, err := p.c.request(ctx, http.MethodGet, "/v1/decisions/stream", q, nil, map[string]string{"X-Api-Key": p.key})
	if err != nil {
		return fmt.Errorf("decisions stream: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("decisions stream: %w", p.c.statusError(resp))
	}
	defer drain(resp)
	readAt := p.c.now()
	b := &batch{p: p, startup: startup, limit: p.c.cfg.MaxDecisions, newIDs: map[int64]int{}, delPfx: map[netip.Prefix]Decision{}}
	if err := parseStream(resp.Body, p.c.cfg.MaxBodyBytes, b.visit); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("decisions stream (startup=%t): no whole answer within pull_timeout (%v): %w", startup, p.c.cfg.PullTimeout, ctx.Err())
		}
		return fmt.Errorf("decisions stream (startup=%t): %w", startup, err)
	}
	news, gone := p.commit(b, readAt)
	if n := b.skipped[skipInvalid] + b.skipped[skipTooBroad] + b.masked + b.dropped; n > 0 {
		p.c.log.Warn("decisions stream: some decisions refused or changed",
			"invalid", b.skipped[skipInvalid], "too_broad", b.skipped[skipTooBroad], "masked", b.masked,
			"dropped_over_max_decisions", b.dropped, "examples", strings.Join(b.reports, "; "))
	}
	p.c.log.Debug("decisions stream", "startup", startup, "received", b.recv, "new", len(news), "deleted", len(gone))
	if len(news) > 0 || len(gone) > 0 {
		p.apply.Apply(news, gone)
	}
	return nil
}

// commit folds a batch into the held decisions and works out, per
// prefix, what the Applier must be told.
func (p *puller) commit(b *batch, now time.Time) (news, gone []Decision) {
	p.mu.Lock()
	defer p.mu.Unlock()
	touched := map[netip.Prefix]bool{}
	for id, h := range p.held {
		_, still := b.newIDs[id]
		if !h.ends.After(now) || b.startup && !still {
			p.drop(id, h)
			touched[h.d.Prefix] = true
		}
	}
	if b.startup {
		for pfx := range p.forwarded {
			touched[pfx] = true
		}
	}
	for _, id := range b.delIDs {
		if h, ok := p.held[id]; ok {
			p.drop(id, h)
			touched[h.d.Prefix] = true
		}
	}
	dropped := b.dropped
	for _, d := range b.news {
		if _, ok := p.held[d.ID]; !ok && len(p.held) >= b.limit {
			dropped++
			continue
		}
		if old, ok := p.held[d.ID]; ok {
			p.drop(d.ID, old)
			touched[old.d.Prefix] = true
		}
		p.held[d.ID] = held{d: d, ends: now.Add(d.Remaining)}
		ids := p.byPrefix[d.Prefix]
		if ids == nil {
			ids = map[int64]struct{}{}
			p.byPrefix[d.Prefix] = ids
		}
		ids[d.ID] = struct{}{}
		touched[d.Prefix] = true
	}
	for _, pfx := range sortedPrefixes(touched) {
		f, was := p.forwarded[pfx]
		ids := p.byPrefix[pfx]
		if len(ids) == 0 {
			if was {
				d := f.d
				d.Remaining = 0
				gone = append(gone, d)
				delete(p.forwarded, pfx)
			}
			continue
		}
		eff := p.longest(ids)
		if !was || eff.d.ID != f.d.ID || absDur(eff.ends.Sub(f.ends)) > time.Second {
			d := eff.d
			d.Remaining = eff.ends.Sub(now)
			news = append(news, d)
			p.forwarded[pfx] = eff
		}
	}
	if b.startup && !p.synced {
		// The first stream of the process: the LAPI's expired decisions
		// name bans an earlier run may have left.
		lifted := map[netip.Prefix]bool{}
		for _, d := range gone {
			lifted[d.Prefix] = true
		}
		for _, pfx := range sortedPrefixes(b.delPfx) {
			if len(p.byPrefix[pfx]) == 0 && !lifted[pfx] {
				gone = append(gone, b.delPfx[pfx])
			}
		}
	}
	if b.startup {
		p.synced = true
		p.st.LastStartup = now
	}
	p.st.Pulls++
	p.st.LastSuccess = now
	p.st.Failures = 0
	p.st.Received += b.recv
	for why, n := range b.skipped {
		p.st.Skipped.add(skip(why), n)
	}
	p.st.Masked += b.masked
	p.st.Dropped += dropped
	p.st.Applied += uint64(len(news))
	p.st.Lifted += uint64(len(gone))
	p.st.Held = len(p.held)
	p.st.Prefixes = len(p.forwarded)
	return news, gone
}

// drop forgets a held decision; p.mu is held.
func (p *puller) drop(id int64, h held) {
	delete(p.held, id)
	if ids := p.byPrefix[h.d.Prefix]; ids != nil {
		delete(ids, id)
		if len(ids) == 0 {
			delete(p.byPrefix, h.d.Prefix)
		}
	}
}

// longest is the decision of ids that ends last (the lowest id on a tie).
func (p *puller) longest(ids map[int64]struct{}) held {
	var best held
	first := true
	for id := range ids {
		h := p.held[id]
		if first || h.ends.After(best.ends) || h.ends.Equal(best.ends) && id < best.d.ID {
			best, first = h, false
		}
	}
	return best
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

func sortedPrefixes[V any](m map[netip.Prefix]V) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	slices.SortFunc(out, comparePrefix)
	return out
}

// heldNow lists the decisions handed to the Applier that still run.
func (p *puller) heldNow() []Decision {
	now := p.c.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Decision, 0, len(p.forwarded))
	for _, h := range p.forwarded {
		if left := h.ends.Sub(now); left > 0 {
			d := h.d
			d.Remaining = left
			out = append(out, d)
		}
	}
	slices.SortFunc(out, func(a, b Decision) int { return comparePrefix(a.Prefix, b.Prefix) })
	return out
}

func (p *puller) status() PullStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}
