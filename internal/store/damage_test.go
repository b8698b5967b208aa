package store

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// storeWith writes a store of n bans (a few hundred kilobytes for n=2000)
// and returns its file, closed.
func storeWith(t *testing.T, n int) (dir, path string) {
	t.Helper()
	dir = t.TempDir()
	s, err := Open(dir, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	reqs := make([]BanRequest, n)
	for i := range reqs {
		a := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		reqs[i] = BanRequest{Prefix: netip.PrefixFrom(a, 32), Reason: "test", Evidence: fmt.Sprintf("record %d with some evidence text", i), TTL: time.Hour, Now: time.Now()}
	}
	if _, err := s.RecordBans(reqs); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, filepath.Join(dir, FileName)
}

// useAll opens dir and runs every read and the start-time prune: none may
// panic; an error must be ErrDamaged.
func useAll(t *testing.T, dir string) error {
	t.Helper()
	s, err := Open(dir, Options{LockTimeout: 100 * time.Millisecond})
	if err != nil {
		return err
	}
	defer s.Close()
	now := time.Now()
	for _, f := range []func() error{
		func() error { _, err := s.Prune(now.Add(-time.Hour)); return err },
		func() error { _, err := s.Bans(); return err },
		func() error { _, err := s.ActiveIndex(now); return err },
		func() error { _, err := s.Allows(now); return err },
		func() error {
			_, err := s.RecordBan(BanRequest{Prefix: netip.MustParsePrefix("192.0.2.1/32"), TTL: time.Hour, Now: now})
			return err
		},
	} {
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}

// A damaged file is an error naming the file, never a panic (bbolt panics
// on such pages when it is not guarded).
func TestDamagedStoreIsAnErrorNotAPanic(t *testing.T) {
	damage := map[string]func(t *testing.T, path string){
		"truncated to 100,000 bytes": func(t *testing.T, path string) {
			if err := os.Truncate(path, 100_000); err != nil {
				t.Fatal(err)
			}
		},
		"truncated to 5,000 bytes": func(t *testing.T, path string) {
			if err := os.Truncate(path, 5000); err != nil {
				t.Fatal(err)
			}
		},
		"data pages zeroed": func(t *testing.T, path string) {
			overwrite(t, path, func(b []byte) {
				clear(b[2*4096:])
			})
		},
		"meta pages zeroed": func(t *testing.T, path string) {
			overwrite(t, path, func(b []byte) { clear(b[:2*4096]) })
		},
		"random bytes over data pages": func(t *testing.T, path string) {
			r := rand.New(rand.NewPCG(1, 2))
			overwrite(t, path, func(b []byte) {
				for i := 2 * 4096; i < len(b); i += 64 {
					b[i] = byte(r.Uint32())
				}
			})
		},
	}
	for name, f := range damage {
		t.Run(name, func(t *testing.T) {
			dir, path := storeWith(t, 2000)
			if st, err := os.Stat(path); err != nil || st.Size() <= 100_000 {
				t.Fatalf("store too small to truncate: %v %v", st.Size(), err)
			}
			f(t, path)
			err := useAll(t, dir)
			if err == nil {
				t.Fatal("a damaged store was read without an error")
			}
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("error is not ErrDamaged: %v", err)
			}
			moved, err := MoveAside(dir, time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))
			if err != nil {
				t.Fatal(err)
			}
			if filepath.Base(moved) != "ctguard.db.damaged-20261203T120000Z" {
				t.Fatalf("moved to %s", moved)
			}
			if err := useAll(t, dir); err != nil {
				t.Fatalf("a new store after moving the damaged one aside: %v", err)
			}
		})
	}
}

// An empty file is a new store (bbolt initialises it).
func TestEmptyFileIsANewStore(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := useAll(t, dir); err != nil {
		t.Fatal(err)
	}
}

func overwrite(t *testing.T, path string, f func([]byte)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f(b)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A ban record that does not decode (valid pages, bad JSON) does not stop
// the store: opening, pruning and the active index work (they read the
// index), and reading that record is an error naming it.
func TestUndecodableRecord(t *testing.T) {
	dir, path := storeWith(t, 10)
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBans).Put([]byte("198.18.0.3/32"), []byte("{not json"))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer s.Close()
	if _, err := s.Prune(time.Now().Add(-time.Hour)); err != nil {
		t.Fatalf("prune: %v", err)
	}
	if a, err := s.ActiveIndex(time.Now()); err != nil || len(a) != 10 {
		t.Fatalf("active index: %d %v", len(a), err)
	}
	if _, err := s.Bans(); err == nil || !strings.Contains(err.Error(), "198.18.0.3/32") {
		t.Fatalf("reading the bad record: %v", err)
	}
}
