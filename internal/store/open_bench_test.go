package store

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// go test -run '^$' -bench OpenVerify ./internal/store: opening a store of
// 100,000 ban records walks every page (the damage check), against bbolt's
// own open of the same file.
func BenchmarkOpenVerify(b *testing.B) {
	dir := b.TempDir()
	s, err := Open(dir, Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	reqs := make([]BanRequest, 100_000)
	for i := range reqs {
		a := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		if i >= 65536 {
			a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, byte(i >> 16), byte(i >> 8), byte(i), 15: 1})
		}
		reqs[i] = BanRequest{Prefix: netip.PrefixFrom(a, a.BitLen()), Reason: "source-score", TTL: time.Hour, Now: time.Now(),
			Evidence: fmt.Sprintf("score %d >= 100 at elevated pressure: 300 entries (idle 300, orphan 300, half-open 0, active 0, stalled 0, closing 0, other 0), oldest idle 1000s, members 0, previous bans 0", i)}
	}
	if _, err := s.RecordBans(reqs); err != nil {
		b.Fatal(err)
	}
	s.Close()
	b.Run("bbolt.Open", func(b *testing.B) {
		for b.Loop() {
			db, err := bolt.Open(filepath.Join(dir, FileName), 0o600, nil)
			if err != nil {
				b.Fatal(err)
			}
			db.Close()
		}
	})
	b.Run("Open", func(b *testing.B) {
		for b.Loop() {
			s, err := Open(dir, Options{})
			if err != nil {
				b.Fatal(err)
			}
			s.Close()
		}
	})
}
