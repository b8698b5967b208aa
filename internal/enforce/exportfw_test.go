package enforce

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeExport is an export set in memory: elements with their comment.
type fakeExport struct {
	mu    sync.Mutex
	info  ExportInfo
	elems map[netip.Prefix]string // prefix -> comment
}

func (x *fakeExport) Info() ExportInfo { return x.info }

func (x *fakeExport) Add(_ context.Context, elems []Element) (ExportResult, error) {
	entries, r := x.info.plan(elems)
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, e := range entries {
		x.elems[e.Prefix] = e.Comment
	}
	return r, nil
}

func (x *fakeExport) Remove(_ context.Context, ps []netip.Prefix) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, p := range ps {
		delete(x.elems, p.Masked())
	}
	return nil
}

func (x *fakeExport) Elements(context.Context) ([]ExportedElement, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []ExportedElement
	for p, c := range x.elems {
		out = append(out, ExportedElement{Prefix: p, Comment: c})
	}
	return out, nil
}

func (x *fakeExport) list() []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []string
	for p := range x.elems {
		out = append(out, p.String())
	}
	slices.Sort(out)
	return out
}

// A set without timeouts (the incident's hash:ip blacklist1): ctguard
// removes each exported ban when it ends, whether lifted (Apply) or run out
// (at the next Check), and at Setup what it left behind for bans that ended
// while it was stopped, never the host's own elements.
func TestExportingWithoutTimeouts(t *testing.T) {
	for _, comments := range []bool{false, true} {
		name := map[bool]string{false: "hash:ip", true: "hash:ip comment"}[comments]
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			clk := &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
			x := &fakeExport{info: ExportInfo{Name: "blacklist1", Type: "hash:ip", Family: "inet", Comments: comments},
				elems: map[netip.Prefix]string{
					pfx("192.0.2.99"):    "",        // the host's own
					pfx("198.51.100.77"): "ctguard", // left behind by an earlier run (its ban ended)
					pfx("198.51.100.78"): "",        // the host's own, not a ban ctguard knows
				}}
			if !comments {
				x.elems[pfx("198.51.100.77")] = ""
			}
			known := func(p netip.Prefix) bool { return p == pfx("198.51.100.77") || p == pfx("203.0.113.110") }
			fw := exporting(NewFake(clk.now), x, slog.New(slog.DiscardHandler), ExportingOptions{Known: known, Now: clk.now})
			// Start: the active ban is restored, the leftover removed.
			id, err := fw.Setup(ctx, []Element{{Prefix: pfx("203.0.113.110"), TTL: 10 * time.Minute}})
			if err != nil {
				t.Fatal(err)
			}
			if got := x.list(); !slices.Equal(got, []string{"192.0.2.99/32", "198.51.100.78/32", "203.0.113.110/32"}) {
				t.Fatalf("after start: %v", got)
			}
			// New bans: a short one, a prefix (hash:ip holds none), a long one.
			if err := fw.Apply(ctx, Change{Add: []Element{{Prefix: pfx("203.0.113.7"), TTL: time.Minute},
				{Prefix: pfx("203.0.113.0/24"), TTL: time.Hour}, {Prefix: pfx("203.0.113.8"), TTL: time.Hour}}}); err != nil {
				t.Fatal(err)
			}
			// Lifted: gone at once.
			if err := fw.Apply(ctx, Change{Delete: []Element{{Prefix: pfx("203.0.113.8")}}}); err != nil {
				t.Fatal(err)
			}
			// A refresh (delete and re-add) keeps it, with the new end.
			clk.add(30 * time.Second)
			if err := fw.Apply(ctx, Change{Delete: []Element{{Prefix: pfx("203.0.113.7")}},
				Add: []Element{{Prefix: pfx("203.0.113.7"), TTL: 2 * time.Minute}}}); err != nil {
				t.Fatal(err)
			}
			clk.add(time.Minute) // the first 1m would have ended
			if _, err := fw.Check(ctx, id); err != nil {
				t.Fatal(err)
			}
			if got := x.list(); !slices.Contains(got, "203.0.113.7/32") || slices.Contains(got, "203.0.113.8/32") {
				t.Fatalf("after a refresh and a lift: %v", got)
			}
			clk.add(10 * time.Minute) // every ban has ended
			if _, err := fw.Check(ctx, id); err != nil {
				t.Fatal(err)
			}
			if got := x.list(); !slices.Equal(got, []string{"192.0.2.99/32", "198.51.100.78/32"}) {
				t.Fatalf("after the bans ended: %v, want the host's own only", got)
			}
		})
	}
}

// With timeout support the set ends its elements itself: Check removes
// nothing, Setup leaves every element alone.
func TestExportingWithTimeouts(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	x := &fakeExport{info: ExportInfo{Name: "b", Type: "hash:net", Family: "inet", Timeouts: true, Prefixes: true, Comments: true},
		elems: map[netip.Prefix]string{pfx("198.51.100.77"): "ctguard"}}
	fw := exporting(NewFake(clk.now), x, slog.New(slog.DiscardHandler), ExportingOptions{Now: clk.now})
	id, err := fw.Setup(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := fw.Apply(ctx, Change{Add: []Element{{Prefix: pfx("203.0.113.0/24"), TTL: time.Minute}}}); err != nil {
		t.Fatal(err)
	}
	clk.add(time.Hour)
	if _, err := fw.Check(ctx, id); err != nil {
		t.Fatal(err)
	}
	if got := x.list(); !slices.Equal(got, []string{"198.51.100.77/32", "203.0.113.0/24"}) {
		t.Fatalf("%v: a set with timeouts ends its elements itself", got)
	}
}
