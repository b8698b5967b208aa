package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/config"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/store"
)

// fakeHost is a procfs with a conntrack table in /proc/net/nf_conntrack
// form, for a daemon that runs whole cycles without root: the proc reader,
// the fake firewall and purger.
type fakeHost struct {
	procfs string
	lines  []string
}

func newFakeHost(t *testing.T, max int) *fakeHost {
	h := &fakeHost{procfs: t.TempDir()}
	dir := filepath.Join(h.procfs, "sys/net/netfilter")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]int{"nf_conntrack_max": max, "nf_conntrack_buckets": max / 4, "nf_conntrack_tcp_timeout_established": 432000} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(fmt.Sprintln(v)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(h.procfs, "net"), 0o755)
	h.write(t)
	return h
}

// idle adds n ESTABLISHED, ASSURED entries from src to 192.0.2.10:443 that
// have been silent for about 1,000 s.
func (h *fakeHost) idle(src string, n int) *fakeHost {
	for i := range n {
		p := 20000 + i
		h.lines = append(h.lines, fmt.Sprintf("ipv4     2 tcp      6 431000 ESTABLISHED src=%s dst=192.0.2.10 sport=%d dport=443 src=192.0.2.10 dst=%s sport=443 dport=%d [ASSURED] mark=0 zone=0 use=2", src, p, src, p))
	}
	return h
}

func (h *fakeHost) write(t *testing.T) {
	t.Helper()
	body := strings.Join(h.lines, "\n")
	if body != "" {
		body += "\n"
	}
	if err := os.WriteFile(filepath.Join(h.procfs, "net/nf_conntrack"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.procfs, "sys/net/netfilter/nf_conntrack_count"), []byte(fmt.Sprintln(len(h.lines))), 0o644); err != nil {
		t.Fatal(err)
	}
}

type fakeDaemon struct {
	d   *Daemon
	fw  *enforce.Fake
	ct  *enforce.FakePurger
	log *bytes.Buffer
}

// fakeConfig is the defaults on the fake host's procfs, with the parts
// that need root (sockets, closing, listeners) off, changed by mod.
func fakeConfig(t *testing.T, h *fakeHost, mod func(*config.Config)) config.Config {
	c := config.Default()
	c.Daemon.Reader, c.Daemon.Procfs = "proc", h.procfs
	c.Daemon.StateDir = t.TempDir()
	c.Daemon.Sockets, c.Daemon.CloseSockets, c.Daemon.WatchListeners = false, false, false
	c.Allow.ResolvConf = "/nonexistent"
	if mod != nil {
		mod(&c)
	}
	return c
}

func newFakeDaemon(t *testing.T, h *fakeHost, mod func(*config.Config)) *fakeDaemon {
	t.Helper()
	c := fakeConfig(t, h, mod)
	f := &fakeDaemon{fw: enforce.NewFake(nil), ct: &enforce.FakePurger{Entries: map[netip.Addr]int{}}, log: new(bytes.Buffer)}
	for _, l := range h.lines {
		src, _, _ := strings.Cut(strings.SplitN(l, "src=", 2)[1], " ")
		f.ct.Entries[netip.MustParseAddr(src)]++
	}
	f.d = startFake(t, c, f.fw, f.ct, f.log)
	return f
}

// startFake makes a daemon on the given fakes, logging to log at debug
// level, and restores its (empty) table.
func startFake(t *testing.T, c config.Config, fw enforce.Firewall, purger enforce.Purger, log *bytes.Buffer) *Daemon {
	t.Helper()
	d, err := New(context.Background(), Options{
		Log: slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})), Config: c,
		Firewall: fw, Purger: purger,
		Interfaces: func() ([]netip.Prefix, error) { return []netip.Prefix{netip.MustParsePrefix("192.0.2.10/24")}, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if _, err := d.eng.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return d
}

func (f *fakeDaemon) banned() string {
	var out []string
	for _, e := range f.fw.Snapshot() {
		out = append(out, e.Prefix.String())
	}
	return strings.Join(out, " ")
}

// A whole cycle on the fakes: the silent bot is banned and purged, the
// light source is not.
func TestCycleBansTheSilentBot(t *testing.T) {
	h := newFakeHost(t, 4096).idle("203.0.113.110", 300).idle("198.51.100.7", 20)
	h.write(t)
	f := newFakeDaemon(t, h, nil)
	f.d.cycle(context.Background())
	if got := f.banned(); got != "203.0.113.110/32" {
		t.Fatalf("banned %q, want the bot only\n%s", got, f.log)
	}
	if n := f.ct.Entries[netip.MustParseAddr("203.0.113.110")]; n != 0 {
		t.Errorf("the bot keeps %d entries after the purge", n)
	}
	if n := f.ct.Entries[netip.MustParseAddr("198.51.100.7")]; n != 20 {
		t.Errorf("the light source has %d entries, want its 20", n)
	}
	if !strings.Contains(f.log.String(), "action=ban target=203.0.113.110/32") {
		t.Errorf("no decision line:\n%s", f.log)
	}
}

// A prefix ban that the allowlist refuses (it changed between the decision
// and the ban) falls back to the member bans it replaced.
func TestRefusedPrefixBansItsMembers(t *testing.T) {
	h := newFakeHost(t, 4096)
	f := newFakeDaemon(t, h, func(c *config.Config) { c.Allow.Addresses = []string{"198.18.11.200"} })
	member := func(a string) policy.Decision {
		return policy.Decision{Target: netip.MustParsePrefix(a), TTL: time.Hour, Reason: policy.ReasonSource}
	}
	bans := []policy.Decision{{
		Target: netip.MustParsePrefix("198.18.11.0/24"), TTL: time.Hour, Reason: policy.ReasonPrefixMembers,
		Instead: []policy.Decision{member("198.18.11.1/32"), member("198.18.11.2/32"), member("198.18.11.3/32")},
	}}
	events := f.d.ban(context.Background(), time.Now(), bans, true)
	if got := f.banned(); got != "198.18.11.1/32 198.18.11.2/32 198.18.11.3/32" {
		t.Fatalf("banned %q, want the three members\n%s", got, f.log)
	}
	if len(events) != 4 || events[0].Action != "refused" || !strings.Contains(events[0].Detail, "banning its 3 members instead") {
		t.Fatalf("events: %+v", events)
	}
}

// A daemon that runs for months keeps its history bounded: the loop prunes
// records that ended more than 30 days ago, not only the start.
func TestCyclePrunesOldHistory(t *testing.T) {
	f := newFakeDaemon(t, newFakeHost(t, 4096), nil)
	old := netip.MustParsePrefix("198.51.100.9/32")
	if _, err := f.d.st.RecordBan(store.BanRequest{Prefix: old, TTL: time.Hour, Now: time.Now().Add(-40 * 24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	f.d.cycle(context.Background())
	if _, err := f.d.st.GetBan(old); err != nil {
		t.Fatalf("pruned before an hour had passed: %v", err)
	}
	f.d.prunedAt = time.Now().Add(-2 * pruneEvery)
	f.d.cycle(context.Background())
	if _, err := f.d.st.GetBan(old); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a 40-day-old record survived the loop's prune: %v", err)
	}
}

// why takes a CIDR too: the grouping prefix's holding (or the sum of those
// inside a wider one), every ban inside, and a verdict for the whole.
func TestWhyPrefix(t *testing.T) {
	h := newFakeHost(t, 4096).idle("198.51.100.7", 300).idle("198.51.100.8", 20)
	h.write(t)
	f := newFakeDaemon(t, h, nil)
	f.d.cycle(context.Background())
	if got := f.banned(); got != "198.51.100.7/32" {
		t.Fatalf("banned %q", got)
	}
	r, err := f.d.WhyPrefix(netip.MustParsePrefix("198.51.100.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Prefix == nil || r.Prefix.Members != 2 || r.Prefix.Counts.Entries != 320 || len(r.Bans) != 1 || r.Source != nil ||
		!strings.HasPrefix(r.Verdict, "partly banned: 1 ban inside 198.51.100.0/24") {
		t.Fatalf("why /24: prefix %+v, bans %d, verdict %q", r.Prefix, len(r.Bans), r.Verdict)
	}
	r, _ = f.d.WhyPrefix(netip.MustParsePrefix("198.51.0.0/16"))
	if r.Prefix == nil || r.Prefix.Key != netip.MustParsePrefix("198.51.0.0/16") || r.Prefix.Counts.Entries != 320 {
		t.Fatalf("why /16 (the sum of the /24s inside): %+v", r.Prefix)
	}
	r, _ = f.d.WhyPrefix(netip.MustParsePrefix("203.0.113.0/24"))
	if r.Verdict != "not banned: nothing inside it held entries at the last scan" {
		t.Fatalf("why of an empty prefix: %q", r.Verdict)
	}
	r, _ = f.d.WhyPrefix(netip.MustParsePrefix("198.51.100.7/32"))
	if r.Source == nil || !strings.HasPrefix(r.Verdict, "BANNED: 198.51.100.7/32 by the policy") {
		t.Fatalf("why of the bot: %+v %q", r.Source, r.Verdict)
	}
}
