package store

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{LockTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestRecordBanCountsAndRefreshes(t *testing.T) {
	s := open(t, t.TempDir())
	p := netip.MustParsePrefix("192.0.2.7/32")
	b, err := s.RecordBan(BanRequest{Prefix: p, Reason: "first", TTL: time.Hour, Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	if b.Count != 1 || !b.First.Equal(t0) || !b.Expires.Equal(t0.Add(time.Hour)) {
		t.Fatalf("first ban: %+v", b)
	}
	if _, err := s.EndBan(p, t0.Add(time.Minute), "unban"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetBan(p); got.Active(t0.Add(2 * time.Minute)) {
		t.Fatalf("ended ban still active: %+v", got)
	}
	b, err = s.RecordBan(BanRequest{Prefix: p, Reason: "again", TTL: 2 * time.Hour, Now: t0.Add(10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if b.Count != 2 || !b.First.Equal(t0) || !b.Last.Equal(t0.Add(10*time.Minute)) ||
		!b.Expires.Equal(t0.Add(130*time.Minute)) || b.Reason != "again" || !b.Ended.IsZero() {
		t.Fatalf("re-ban: %+v", b)
	}
}

func TestActivePruneAndPersistence(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		p   string
		ttl time.Duration
	}{
		{"192.0.2.1/32", time.Hour},
		{"198.51.100.0/24", time.Second},
		{"2001:db8::1/128", time.Hour},
		{"2001:db8:1::/48", 30 * time.Second},
	}
	for _, c := range cases {
		if _, err := s.RecordBan(BanRequest{Prefix: netip.MustParsePrefix(c.p), TTL: c.ttl, Now: t0}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir) // reopen: records survive
	act, err := s.ActiveBans(t0.Add(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range act {
		got = append(got, b.Prefix.String())
	}
	if want := "192.0.2.1/32 2001:db8::1/128 2001:db8:1::/48"; strings.Join(got, " ") != want {
		t.Fatalf("active = %v, want %s", got, want)
	}
	n, err := s.Prune(t0.Add(time.Minute))
	if err != nil || n != 2 {
		t.Fatalf("prune = %d, %v; want 2", n, err)
	}
	all, _ := s.Bans()
	if len(all) != 2 {
		t.Fatalf("after prune %d records, want 2", len(all))
	}
}

func TestAllowEntries(t *testing.T) {
	s := open(t, t.TempDir())
	perm := Allow{Prefix: netip.MustParsePrefix("203.0.113.0/24"), Note: "office", Added: t0}
	tmp := Allow{Prefix: netip.MustParsePrefix("2001:db8::5/128"), Added: t0, Expires: t0.Add(time.Minute)}
	for _, a := range []Allow{perm, tmp} {
		if err := s.PutAllow(a); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := s.Allows(t0); len(got) != 2 {
		t.Fatalf("allows at t0 = %v", got)
	}
	got, _ := s.Allows(t0.Add(2 * time.Minute))
	if len(got) != 1 || got[0].Note != "office" {
		t.Fatalf("allows after expiry = %v", got)
	}
	if err := s.DeleteAllow(perm.Prefix); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAllow(perm.Prefix); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestSecondOpenIsLockedNotHung(t *testing.T) {
	dir := t.TempDir()
	open(t, dir)
	start := time.Now()
	_, err := Open(dir, Options{LockTimeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Errorf("error does not name the holder: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("second open took %v", d)
	}
}

func TestDir(t *testing.T) {
	t.Setenv("CTGUARD_STATE_DIR", "/env/dir")
	for _, c := range []struct{ flag, want string }{{"/flag", "/flag"}, {"", "/env/dir"}} {
		if got := Dir(c.flag); got != c.want {
			t.Errorf("Dir(%q) = %q, want %q", c.flag, got, c.want)
		}
	}
	t.Setenv("CTGUARD_STATE_DIR", "")
	if got := Dir(""); got != DefaultDir {
		t.Errorf("Dir default = %q", got)
	}
}

func TestMeta(t *testing.T) {
	s := open(t, t.TempDir())
	if v, err := s.Meta("k"); err != nil || v != "" {
		t.Fatalf("unset meta = %q, %v", v, err)
	}
	if err := s.SetMeta("k", "42"); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Meta("k"); v != "42" {
		t.Fatalf("meta = %q", v)
	}
}

func TestActiveIndex(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		p   string
		ttl time.Duration
	}{{"192.0.2.1/32", time.Hour}, {"192.0.2.2/32", time.Hour}, {"198.51.100.0/24", time.Second}, {"2001:db8::/48", time.Hour}} {
		if _, err := s.RecordBan(BanRequest{Prefix: netip.MustParsePrefix(c.p), TTL: c.ttl, Now: t0}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.EndBan(netip.MustParsePrefix("192.0.2.2/32"), t0, "unban"); err != nil {
		t.Fatal(err)
	}
	want := "192.0.2.1/32 2001:db8::/48"
	idx := func() string {
		t.Helper()
		act, err := s.ActiveIndex(t0.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range act {
			got = append(got, a.Prefix.String())
			if !a.Expires.Equal(t0.Add(time.Hour)) {
				t.Errorf("%s expires %v", a.Prefix, a.Expires)
			}
		}
		return strings.Join(got, " ")
	}
	if got := idx(); got != want {
		t.Fatalf("index %q, want %q", got, want)
	}
	// An index lost, or in the first format, is rebuilt at open.
	if err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketIndex); err != nil {
			return err
		}
		_, err := tx.CreateBucket(bucketOldIndex)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := idx(); got != want {
		t.Fatalf("rebuilt index %q, want %q", got, want)
	}
	// Prune by the index: the ended record goes first (ended at t0), then
	// the expired ones.
	if n, err := s.Prune(t0.Add(30 * time.Minute)); err != nil || n != 2 {
		t.Fatalf("prune at +30m: %d, %v; want the ended /32 and the expired /24", n, err)
	}
	if _, err := s.GetBan(netip.MustParsePrefix("192.0.2.2/32")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ended record kept: %v", err)
	}
	if n, err := s.Prune(t0.Add(2 * time.Hour)); err != nil || n != 2 {
		t.Fatalf("prune at +2h: %d, %v", n, err)
	}
	if act, _ := s.ActiveIndex(t0); len(act) != 0 {
		t.Fatalf("index after prune: %v", act)
	}
	if all, _ := s.Bans(); len(all) != 0 {
		t.Fatalf("records after prune: %v", all)
	}
	s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketOldIndex) != nil {
			t.Error("old index bucket not dropped")
		}
		return nil
	})
}

// ActiveIndex is served from memory between writes: it follows every write
// and the clock, and costs the active bans, not the history.
func TestActiveIndexCache(t *testing.T) {
	s := open(t, t.TempDir())
	var hist []BanRequest
	for i := range 2000 {
		hist = append(hist, BanRequest{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32), TTL: time.Minute, Now: t0})
	}
	if _, err := s.RecordBans(hist); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(time.Hour) // the history has expired
	for _, r := range []BanRequest{
		{Prefix: netip.MustParsePrefix("192.0.2.1/32"), TTL: time.Hour, Now: now},
		{Prefix: netip.MustParsePrefix("192.0.2.2/32"), TTL: 3 * time.Hour, Now: now},
	} {
		if _, err := s.RecordBan(r); err != nil {
			t.Fatal(err)
		}
	}
	n := func(at time.Time) int {
		a, err := s.ActiveIndex(at)
		if err != nil {
			t.Fatal(err)
		}
		return len(a)
	}
	if got := n(now); got != 2 {
		t.Fatalf("active = %d, want 2", got)
	}
	if got := n(now.Add(2 * time.Hour)); got != 1 {
		t.Fatalf("after the first expired: %d, want 1", got)
	}
	if _, err := s.EndBan(netip.MustParsePrefix("192.0.2.2/32"), now.Add(2*time.Hour), "unban"); err != nil {
		t.Fatal(err)
	}
	if got := n(now.Add(2 * time.Hour)); got != 0 {
		t.Fatalf("after the unban: %d, want 0", got)
	}
	// An earlier time than the cached one reads the index again.
	if got := n(t0); got != 2001 { // the history and 192.0.2.1 (192.0.2.2 ended)
		t.Fatalf("at the history's time: %d, want 2001", got)
	}
}

// go test -bench ActiveIndex ./internal/store: with 100,000 records of
// history and 10 active bans, a cycle's read costs the 10.
func BenchmarkActiveIndex(b *testing.B) {
	s, err := Open(b.TempDir(), Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var hist []BanRequest
	for i := range 100_000 {
		hist = append(hist, BanRequest{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32), TTL: time.Minute, Now: t0})
	}
	for i := range 10 {
		hist[i].TTL = 48 * time.Hour
	}
	if _, err := s.RecordBans(hist); err != nil {
		b.Fatal(err)
	}
	now := t0.Add(time.Hour)
	for _, cached := range []bool{false, true} {
		b.Run(fmt.Sprintf("cached=%v", cached), func(b *testing.B) {
			for b.Loop() {
				if !cached {
					s.mu.Lock()
					s.cached = false
					s.mu.Unlock()
				}
				if a, _ := s.ActiveIndex(now); len(a) != 10 {
					b.Fatalf("%d active", len(a))
				}
			}
		})
	}
}
