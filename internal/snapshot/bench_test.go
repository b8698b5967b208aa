package snapshot

import (
	"net/netip"
	"testing"

	"github.com/ctguard/ctguard/internal/conntrack"
)

// tableMessages builds a dump of n ESTABLISHED+ASSURED entries from
// sources sources, encoded as the kernel encodes them.
func tableMessages(n, sources int) [][]byte {
	dst := netip.MustParseAddr("192.0.2.10")
	// One contiguous buffer, as messages arrive in the receive buffer.
	buf := make([]byte, 0, n*200)
	offs := make([]int, 0, n+1)
	for i := range n {
		s := i % sources
		src := netip.AddrFrom4([4]byte{198, 18, byte(s >> 8), byte(s)})
		e := conntrack.Entry{
			Family: conntrack.FamilyIPv4, Proto: conntrack.ProtoTCP,
			Orig:    conntrack.Tuple{Src: src, Dst: dst, SrcPort: uint16(1024 + i/sources), DstPort: 443},
			Reply:   conntrack.Tuple{Src: dst, Dst: src, SrcPort: 443, DstPort: uint16(1024 + i/sources)},
			Status:  conntrack.StatusConfirmed | conntrack.StatusSeenReply | conntrack.StatusAssured,
			Timeout: uint32(431000 - i%5000), TCPState: conntrack.TCPEstablished, HasTCPState: true, ID: uint32(i + 1),
		}
		offs = append(offs, len(buf))
		buf = conntrack.AppendMessage(buf, &e)
	}
	offs = append(offs, len(buf))
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = buf[offs[i]:offs[i+1]]
	}
	return msgs
}

// BenchmarkParseAggregate is the hot loop of every scan: parse one dump
// message into the reused Entry and fold it into the aggregator. After the
// first scan warms the maps, it must not allocate per entry.
func BenchmarkParseAggregate(b *testing.B) {
	const entries, sources = 262144, 1000
	msgs := tableMessages(entries, sources)
	a := NewAggregator(Config{Local: NewLocalSet(netip.MustParseAddr("192.0.2.10"))})
	var e conntrack.Entry
	scan := func() {
		a.Reset()
		for _, m := range msgs {
			if err := conntrack.ParseMessage(m, &e); err != nil {
				b.Fatal(err)
			}
			a.Add(&e)
		}
	}
	scan() // warm-up: map capacity for the sources
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		scan()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/entries, "ns/entry")
}

func TestParseAggregateAllocs(t *testing.T) {
	msgs := tableMessages(20000, 500)
	a := NewAggregator(Config{})
	var e conntrack.Entry
	scan := func() {
		a.Reset()
		for _, m := range msgs {
			if err := conntrack.ParseMessage(m, &e); err != nil {
				t.Fatal(err)
			}
			a.Add(&e)
		}
	}
	scan()
	if allocs := testing.AllocsPerRun(5, scan); allocs != 0 {
		t.Fatalf("a steady-state scan of %d entries allocated %.0f times, want 0", len(msgs), allocs)
	}
}
