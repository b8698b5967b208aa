package enforce

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/testutil"
	"github.com/vishvananda/netns"
)

// BenchmarkRootBan100k measures 100,000 IPv4 bans (BENCHMARKS.md, "ipset
// backend"), each variant in its own throw-away network namespace, as root:
//
//	go test -run '^$' -bench '^BenchmarkRootBan100k$' -benchtime 5x ./internal/enforce
//
// One op is 100,000 bans into empty sets (ns/op), except add-loop, where
// one op is a shell loop of 500 `ipset add` processes and s/100k is that
// extrapolated. Check is one reconcile check with the 100,000 loaded.
func BenchmarkRootBan100k(b *testing.B) {
	testutil.RequireRoot(b, append(labIPSetLegacy.tools(), labIPSetNFT.tools()...)...)
	const n = 100_000
	ctx := context.Background()
	v4 := make([]Element, n)
	a := netip.MustParseAddr("198.18.0.0")
	for i := range v4 {
		v4[i] = Element{Prefix: netip.PrefixFrom(a, 32), TTL: time.Hour}
		a = a.Next()
	}
	open := func(b *testing.B) (*testutil.NS, int) {
		ns := testutil.NewNS(b)
		h, err := netns.GetFromName(ns.Name)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { h.Close() })
		return ns, int(h)
	}
	count := func(b *testing.B, ns *testutil.NS, set string) int {
		out := ns.MustRun(b, "ipset", "list", "-t", set)
		for _, l := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(l, "Number of entries: "); ok {
				var c int
				fmt.Sscan(v, &c)
				return c
			}
		}
		b.Fatalf("no count in:\n%s", out)
		return 0
	}

	for _, fl := range []IPTablesFlavour{IPTablesLegacy, IPTablesNFT} {
		b.Run("ctguard-ipset-"+string(fl), func(b *testing.B) {
			ns, fd := open(b)
			s := NewIPSet(nil, IPSetOptions{NetNSFd: fd, IPTables: fl})
			b.Run("Apply", func(b *testing.B) {
				for b.Loop() {
					b.StopTimer()
					if _, err := s.Setup(ctx, nil); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					if err := s.Apply(ctx, Change{Add: v4}); err != nil {
						b.Fatal(err)
					}
				}
				if c := count(b, ns, IPSetPrefix+"ban4"); c != n {
					b.Fatalf("%d of %d in the set", c, n)
				}
			})
			b.Run("Setup", func(b *testing.B) { // restore at start: temporary sets, swap, chains
				for b.Loop() {
					if _, err := s.Setup(ctx, v4); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("Check", func(b *testing.B) {
				for b.Loop() {
					if p, err := s.Check(ctx, 0); p != "" || err != nil {
						b.Fatal(p, err)
					}
				}
			})
		})
	}

	b.Run("ipset-restore", func(b *testing.B) {
		ns, _ := open(b)
		ns.MustRun(b, "ipset", "create", "bench", "hash:ip", "timeout", "3600", "maxelem", "1048576")
		var in strings.Builder
		for _, e := range v4 {
			fmt.Fprintf(&in, "add bench %s timeout 3600\n", e.Prefix.Addr())
		}
		file := filepath.Join(b.TempDir(), "restore.txt")
		if err := os.WriteFile(file, []byte(in.String()), 0o644); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			b.StopTimer()
			ns.MustRun(b, "ipset", "destroy", "bench")
			ns.MustRun(b, "ipset", "create", "bench", "hash:ip", "timeout", "3600", "maxelem", "1048576")
			f, err := os.Open(file)
			if err != nil {
				b.Fatal(err)
			}
			cmd := exec.Command("ip", "netns", "exec", ns.Name, "ipset", "restore")
			cmd.Stdin = f // a pipe from the file, as a cron script would feed it
			b.StartTimer()
			out, err := cmd.CombinedOutput()
			b.StopTimer()
			f.Close()
			if err != nil {
				b.Fatalf("ipset restore: %v: %s", err, out)
			}
			b.StartTimer()
		}
		if c := count(b, ns, "bench"); c != n {
			b.Fatalf("%d of %d in the set", c, n)
		}
	})

	b.Run("ipset-add-loop", func(b *testing.B) {
		ns, _ := open(b)
		ns.MustRun(b, "ipset", "create", "bench", "hash:ip", "timeout", "3600", "maxelem", "1048576")
		const sample = 500
		var script strings.Builder
		script.WriteString("set -e\n")
		for _, e := range v4[:sample] {
			fmt.Fprintf(&script, "ipset add bench %s timeout 3600\n", e.Prefix.Addr())
		}
		file := filepath.Join(b.TempDir(), "loop.sh")
		if err := os.WriteFile(file, []byte(script.String()), 0o755); err != nil {
			b.Fatal(err)
		}
		var total time.Duration
		runs := 0
		for b.Loop() {
			runs++
			b.StopTimer()
			ns.MustRun(b, "ipset", "flush", "bench")
			b.StartTimer()
			start := time.Now()
			ns.MustRun(b, "sh", file)
			total += time.Since(start)
		}
		if c := count(b, ns, "bench"); c != sample {
			b.Fatalf("%d of %d in the set", c, sample)
		}
		b.ReportMetric((total / time.Duration(runs) * n / sample).Seconds(), "s/100k")
	})

	b.Run("ctguard-nftables", func(b *testing.B) {
		ns, fd := open(b)
		fw := NewNFT(nil, NFTOptions{NetNSFd: fd})
		b.Run("Apply", func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				if _, err := fw.Setup(ctx, nil); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := fw.Apply(ctx, Change{Add: v4}); err != nil {
					b.Fatal(err)
				}
			}
			if got := setSize(b, ns, SetBan4); got != n {
				b.Fatalf("ban4 holds %d of %d", got, n)
			}
		})
		b.Run("Setup", func(b *testing.B) {
			for b.Loop() {
				if _, err := fw.Setup(ctx, v4); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("Check", func(b *testing.B) {
			for b.Loop() {
				if p, err := fw.Check(ctx, 0); p != "" || err != nil {
					b.Fatal(p, err)
				}
			}
		})
	})
}
