package enforce

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/store"
)

// fakeAllow allowlists some prefixes and holds SSH sessions from others.
type fakeAllow struct{ deny, sessions []netip.Prefix }

func (a fakeAllow) Check(p netip.Prefix) (allow.Entry, bool) {
	for _, d := range a.deny {
		if d.Overlaps(p) {
			return allow.Entry{Prefix: d, Source: allow.Configured}, true
		}
	}
	return allow.Entry{}, false
}

func (a fakeAllow) Session(p netip.Prefix) (allow.Entry, bool) {
	for _, s := range a.sessions {
		if p.Contains(s.Addr()) {
			return allow.Entry{Prefix: s, Source: allow.SSH}, true
		}
	}
	return allow.Entry{}, false
}

func TestPlanBans(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	list := fakeAllow{
		deny:     []netip.Prefix{pfx("192.0.2.0/24")},
		sessions: []netip.Prefix{pfx("198.18.7.200/32")},
	}
	active := []store.Active{
		{Prefix: pfx("203.0.113.0/24"), Expires: now.Add(time.Hour)},
		{Prefix: pfx("198.51.100.7/32"), Expires: now.Add(3 * time.Hour)},
		{Prefix: pfx("198.51.100.8/32"), Expires: now.Add(10 * time.Minute)},
		{Prefix: pfx("2001:db8:5::/64"), Expires: now.Add(time.Hour), Scoped: true},
		{Prefix: pfx("2001:db8:5::1/128"), Expires: now.Add(time.Hour)}, // stale: covered by the /64
	}
	type want struct {
		err       error // errors.Is target, or nil
		allowed   bool  // refused by the allowlist
		covered   string
		refreshed bool
		scoped    bool
		replaced  []string
		ttl       time.Duration
	}
	cases := []struct {
		name string
		req  BanRequest
		want want
	}{
		{"host bits", BanRequest{Prefix: pfx("198.51.100.9/24"), TTL: time.Hour}, want{err: ErrBadTarget}},
		{"v4-mapped", BanRequest{Prefix: pfx("::ffff:198.51.100.9/128"), TTL: time.Hour}, want{err: ErrBadTarget}},
		{"zero ttl", BanRequest{Prefix: pfx("198.51.100.9/32"), TTL: 0}, want{err: ErrBadTTL}},
		{"ttl too long", BanRequest{Prefix: pfx("198.51.100.9/32"), TTL: MaxTTL + time.Hour}, want{err: ErrBadTTL}},
		{"allowlisted", BanRequest{Prefix: pfx("192.0.2.77/32"), TTL: time.Hour}, want{allowed: true}},
		{"allowlist inside a prefix", BanRequest{Prefix: pfx("192.0.0.0/16"), TTL: time.Hour}, want{allowed: true}},
		{"covered by an active /24", BanRequest{Prefix: pfx("203.0.113.9/32"), TTL: time.Hour}, want{covered: "203.0.113.0/24"}},
		{"new", BanRequest{Prefix: pfx("198.51.100.9/32"), TTL: time.Hour}, want{ttl: time.Hour}},
		{"repeat never shortens", BanRequest{Prefix: pfx("198.51.100.7/32"), TTL: time.Hour}, want{refreshed: true, ttl: 3 * time.Hour}},
		{"repeat with ExactTTL shortens", BanRequest{Prefix: pfx("198.51.100.7/32"), TTL: time.Hour, ExactTTL: true}, want{refreshed: true, ttl: time.Hour}},
		{"repeat lengthens", BanRequest{Prefix: pfx("198.51.100.8/32"), TTL: time.Hour}, want{refreshed: true, ttl: time.Hour}},
		{"SSH session inside", BanRequest{Prefix: pfx("198.18.7.0/24"), TTL: time.Hour}, want{scoped: true, ttl: time.Hour}},
		{"wider prefix replaces", BanRequest{Prefix: pfx("203.0.0.0/16"), TTL: time.Hour}, want{replaced: []string{"203.0.113.0/24"}, ttl: time.Hour}},
		{"v6 covered by scoped /64", BanRequest{Prefix: pfx("2001:db8:5::9/128"), TTL: time.Hour}, want{covered: "2001:db8:5::/64"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			plan := planBans([]BanRequest{tc.req}, list, active, now)
			r := plan.Results[0]
			w := tc.want
			switch {
			case w.err != nil:
				if !errors.Is(r.Err, w.err) || len(plan.Accepted) != 0 || len(plan.Change.Add) != 0 {
					t.Fatalf("got %+v (accepted %v), want %v and nothing planned", r, plan.Accepted, w.err)
				}
				return
			case w.allowed:
				if !errors.Is(r.Err, allow.ErrAllowlisted) || len(plan.Change.Add) != 0 {
					t.Fatalf("got %+v, want refused by the allowlist", r)
				}
				return
			case w.covered != "":
				if r.Err != nil || r.CoveredBy != pfx(w.covered) || len(plan.Change.Add) != 0 {
					t.Fatalf("got %+v, want skipped as covered by %s", r, w.covered)
				}
				return
			}
			if r.Err != nil || len(plan.Accepted) != 1 || plan.Accepted[0] != 0 {
				t.Fatalf("got %+v accepted %v, want accepted", r, plan.Accepted)
			}
			if r.Refreshed != w.refreshed || r.Scoped != w.scoped || r.TTL != w.ttl || plan.TTL[0] != w.ttl {
				t.Errorf("got refreshed=%v scoped=%v ttl=%s/%s, want %v %v %s", r.Refreshed, r.Scoped, r.TTL, plan.TTL[0], w.refreshed, w.scoped, w.ttl)
			}
			if w.scoped && r.Session.Prefix != pfx("198.18.7.200/32") {
				t.Errorf("session %v, want the operator's", r.Session)
			}
			var replaced []string
			for _, q := range r.Replaced {
				replaced = append(replaced, q.String())
			}
			if !slices.Equal(replaced, w.replaced) {
				t.Errorf("replaced %v, want %v", replaced, w.replaced)
			}
			// The kernel change: the ban added with its final timeout and
			// scope; deletes for what it replaces or refreshes.
			if len(plan.Change.Add) != 1 || plan.Change.Add[0] != (Element{Prefix: tc.req.Prefix, TTL: w.ttl, Scoped: w.scoped}) {
				t.Errorf("adds %+v", plan.Change.Add)
			}
			wantDel := len(w.replaced)
			if w.refreshed {
				wantDel++
			}
			if len(plan.Change.Delete) != wantDel {
				t.Errorf("deletes %+v, want %d", plan.Change.Delete, wantDel)
			}
		})
	}
}

// In one batch an outer prefix is planned first, so the addresses inside it
// are skipped as covered whatever their order, and duplicates collapse.
func TestPlanBansBatchOrder(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	reqs := []BanRequest{
		{Prefix: pfx("198.51.100.7/32"), TTL: time.Hour},
		{Prefix: pfx("198.51.100.0/24"), TTL: time.Hour},
		{Prefix: pfx("2001:db8::1/128"), TTL: time.Hour},
		{Prefix: pfx("2001:db8::1/128"), TTL: 2 * time.Hour},
	}
	plan := planBans(reqs, fakeAllow{}, nil, now)
	if got := plan.Results[0].CoveredBy; got != pfx("198.51.100.0/24") {
		t.Errorf("the /32 inside the batch's /24: covered by %v", got)
	}
	if got := plan.Results[3].CoveredBy; got != pfx("2001:db8::1/128") {
		t.Errorf("the duplicate: covered by %v", got)
	}
	if !slices.Equal(plan.Accepted, []int{1, 2}) || len(plan.Change.Add) != 2 || len(plan.Change.Delete) != 0 {
		t.Errorf("accepted %v adds %+v deletes %+v", plan.Accepted, plan.Change.Add, plan.Change.Delete)
	}
	// The plan is pure: the requests are not changed.
	if reqs[0].TTL != time.Hour || reqs[3].TTL != 2*time.Hour {
		t.Errorf("requests changed: %+v", reqs)
	}
}

// commitBans carries out a plan on the fakes: the kernel change, the
// replaced ban ended in the store, the purge of the new prefix recorded.
func TestCommitBans(t *testing.T) {
	f := newFixture(t)
	f.ban(t, "2001:db8:5:0:8000::/65", time.Hour)
	ctx := t.Context()
	now := f.clk.now()
	list, err := f.eng.Allowlist()
	if err != nil {
		t.Fatal(err)
	}
	active, err := f.st.ActiveIndex(now)
	if err != nil {
		t.Fatal(err)
	}
	reqs := []BanRequest{{Prefix: pfx("2001:db8:5::/64"), TTL: 2 * time.Hour, Reason: "prefix"}}
	plan := planBans(reqs, list, active, now)
	if len(plan.Accepted) != 1 || len(plan.Results[0].Replaced) != 1 {
		t.Fatalf("plan %+v", plan)
	}
	res, err := f.eng.commitBans(ctx, reqs, plan, list, now, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	// The /65 held nothing; the /64 purges its two sources' 15 entries.
	if b := res[0].Ban; b.Prefix != pfx("2001:db8:5::/64") || b.Purged != 15 || !b.Expires.Equal(now.Add(2*time.Hour)) {
		t.Errorf("committed %+v", b)
	}
	if got := elemList(f.fw); got != "2001:db8:5::/64" {
		t.Errorf("kernel holds %q, want the /24 only", got)
	}
	old, err := f.st.GetBan(pfx("2001:db8:5:0:8000::/65"))
	if err != nil {
		t.Fatal(err)
	}
	if old.Ended.IsZero() || old.EndReason != "replaced by 2001:db8:5::/64" {
		t.Errorf("the replaced ban: ended %v %q", old.Ended, old.EndReason)
	}

	// A kernel change that fails: every accepted ban gets the error and
	// nothing reaches the store.
	reqs = []BanRequest{{Prefix: pfx("2001:db8:99::1/128"), TTL: time.Hour, Reason: "unit"}}
	active, _ = f.st.ActiveIndex(now)
	plan = planBans(reqs, list, active, now)
	f.fw.FailApply = errors.New("netlink: operation not permitted")
	res, err = f.eng.commitBans(ctx, reqs, plan, list, now, time.Now(), 0)
	if err == nil || res[0].Err == nil {
		t.Fatalf("a failed kernel change: %v, %+v", err, res[0])
	}
	if _, err := f.st.GetBan(pfx("2001:db8:99::1/128")); err == nil {
		t.Error("the store recorded a ban the kernel refused")
	}
	if f.fw.Drops(netip.MustParseAddr("2001:db8:99::1")) || f.ct.Entries[netip.MustParseAddr("2001:db8:99::1")] != 7 {
		t.Error("a ban whose kernel change failed drops or purged")
	}
}
