package conntrack

import (
	"encoding/binary"
	"net/netip"
	"os"
	"testing"
)

// recorded returns the message payloads of a recorded kernel dump.
func recorded(tb testing.TB, name string) [][]byte {
	tb.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		tb.Fatal(err)
	}
	var msgs [][]byte
	for len(b) >= 4 {
		n := int(binary.LittleEndian.Uint32(b))
		msgs = append(msgs, b[4:4+n])
		b = b[4+n:]
	}
	return msgs
}

func TestParseRecordedMixed(t *testing.T) {
	msgs := recorded(t, "netlink-mixed.bin")
	if len(msgs) != len(mixedInserts) {
		t.Fatalf("%d messages recorded, want %d", len(msgs), len(mixedInserts))
	}
	type want struct {
		family, proto uint8
		dst           string
		sport, dport  uint16
		icmpID        uint16
		icmpType      uint8
		state         TCPState
		hasState      bool
		seenReply     bool
		assured       bool
		maxTimeout    uint32
		mark          uint32
		replySrc      string
		replyDstPort  uint16
		replyICMPType uint8
	}
	wants := map[string]want{
		"192.0.2.66":   {family: FamilyIPv4, proto: ProtoTCP, dst: "192.0.2.10", sport: 20001, dport: 443, state: TCPEstablished, hasState: true, seenReply: true, assured: true, maxTimeout: 430999, replySrc: "192.0.2.10", replyDstPort: 20001},
		"2001:db8::68": {family: FamilyIPv6, proto: ProtoICMPv6, dst: "2001:db8::10", icmpID: 9, icmpType: 128, maxTimeout: 28, replySrc: "2001:db8::10", replyICMPType: 129},
		"192.0.2.97":   {family: FamilyIPv4, proto: ProtoICMP, dst: "192.0.2.10", icmpID: 77, icmpType: 8, maxTimeout: 28, replySrc: "192.0.2.10", replyICMPType: 0},
		"192.0.2.77":   {family: FamilyIPv4, proto: ProtoTCP, dst: "192.0.2.10", sport: 30001, dport: 443, state: TCPSynRecv, hasState: true, maxTimeout: 59, replySrc: "192.0.2.10", replyDstPort: 30001},
		"192.0.2.98":   {family: FamilyIPv4, proto: ProtoUDP, dst: "192.0.2.10", sport: 5354, dport: 53, seenReply: true, assured: true, maxTimeout: 169, replySrc: "192.0.2.10", replyDstPort: 5354},
		"192.0.2.99":   {family: FamilyIPv4, proto: ProtoUDP, dst: "192.0.2.10", sport: 5353, dport: 443, maxTimeout: 29, replySrc: "192.0.2.10", replyDstPort: 5353},
		"192.0.2.10":   {family: FamilyIPv4, proto: ProtoTCP, dst: "198.51.100.5", sport: 41000, dport: 5432, state: TCPEstablished, hasState: true, seenReply: true, assured: true, maxTimeout: 431499, mark: 7, replySrc: "198.51.100.5", replyDstPort: 41000},
		"192.0.2.78":   {family: FamilyIPv4, proto: ProtoTCP, dst: "192.0.2.10", sport: 30002, dport: 80, state: TCPTimeWait, hasState: true, seenReply: true, assured: true, maxTimeout: 99, replySrc: "192.0.2.10", replyDstPort: 30002},
		"2001:db8::66": {family: FamilyIPv6, proto: ProtoTCP, dst: "2001:db8::10", sport: 20001, dport: 443, state: TCPEstablished, hasState: true, seenReply: true, assured: true, maxTimeout: 430999, replySrc: "2001:db8::10", replyDstPort: 20001},
		"2001:db8::67": {family: FamilyIPv6, proto: ProtoUDP, dst: "2001:db8::10", sport: 20001, dport: 443, maxTimeout: 29, replySrc: "2001:db8::10", replyDstPort: 20001},
	}
	seen := map[string]bool{}
	var e Entry
	for _, m := range msgs {
		if err := ParseMessage(m, &e); err != nil {
			t.Fatalf("parse: %v", err)
		}
		src := e.Orig.Src.String()
		w, ok := wants[src]
		if !ok || seen[src] {
			t.Fatalf("unexpected or duplicate entry %v", &e)
		}
		seen[src] = true
		checks := []struct {
			what      string
			got, want any
		}{
			{"family", e.Family, w.family},
			{"proto", e.Proto, w.proto},
			{"dst", e.Orig.Dst.String(), w.dst},
			{"sport", e.Orig.SrcPort, w.sport},
			{"dport", e.Orig.DstPort, w.dport},
			{"icmp id", e.Orig.ICMPID, w.icmpID},
			{"icmp type", e.Orig.ICMPType, w.icmpType},
			{"has state", e.HasTCPState, w.hasState},
			{"state", e.TCPState, w.state},
			{"seen reply", e.Status.Has(StatusSeenReply), w.seenReply},
			{"assured", e.Status.Has(StatusAssured), w.assured},
			{"confirmed", e.Status.Has(StatusConfirmed), true},
			{"mark", e.Mark, w.mark},
			{"reply src", e.Reply.Src.String(), w.replySrc},
			{"reply dst", e.Reply.Dst, e.Orig.Src},
			{"reply dport", e.Reply.DstPort, w.replyDstPort},
			{"reply icmp type", e.Reply.ICMPType, w.replyICMPType},
			{"counters (acct was on)", e.HasCounters, true},
			{"has id", e.ID != 0, true},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("%s: %s = %v, want %v", src, c.what, c.got, c.want)
			}
		}
		if e.Timeout == 0 || e.Timeout > w.maxTimeout || e.Timeout < w.maxTimeout-5 {
			t.Errorf("%s: timeout %d, want just under %d", src, e.Timeout, w.maxTimeout)
		}
	}
}

func TestParseMalformed(t *testing.T) {
	good := recorded(t, "netlink-mixed.bin")[0]
	var e Entry
	for n := 0; n < len(good); n++ {
		// Every truncation either parses (at an attribute boundary) or is
		// reported as malformed; none may panic.
		_ = ParseMessage(good[:n], &e)
	}
	if err := ParseMessage([]byte{2, 0}, &e); err == nil {
		t.Error("short header accepted")
	}
	bad := append([]byte(nil), good...)
	binary.NativeEndian.PutUint16(bad[4:], 2) // attribute length below its header
	if err := ParseMessage(bad, &e); err == nil {
		t.Error("attribute length 2 accepted")
	}
	bad = append([]byte(nil), good...)
	binary.NativeEndian.PutUint16(bad[4:], 0xfff0) // longer than the message
	if err := ParseMessage(bad, &e); err == nil {
		t.Error("overlong attribute accepted")
	}
}

func TestBuilderRoundTrip(t *testing.T) {
	src, dst := netip.MustParseAddr("2001:db8:1::5"), netip.MustParseAddr("2001:db8::10")
	in := synthetic(src, dst, 1, 40000, 4321)[0]
	in.Mark, in.Zone = 9, 3
	var b builder
	b.begin(ctMsgNew, 0, 1, FamilyIPv6, 0)
	b.tuple(ctaTupleOrig, &in.Orig, in.Proto)
	b.tuple(ctaTupleReply, &in.Reply, in.Proto)
	b.u32be(ctaTimeout, in.Timeout)
	b.u32be(ctaStatus, uint32(in.Status))
	b.u32be(ctaMark, in.Mark)
	b.u16be(ctaZone, in.Zone)
	b.nest(ctaProtoinfo)
	b.nest(ctaProtoinfoTCP)
	b.u8(ctaProtoinfoTCPState, uint8(in.TCPState))
	b.endNest()
	b.endNest()
	b.end()
	var out Entry
	if err := ParseMessage(b.b[nlmsgHdrLen:], &out); err != nil {
		t.Fatal(err)
	}
	in.Family = FamilyIPv6
	if out != in {
		t.Fatalf("round trip:\n got %+v\nwant %+v", out, in)
	}
}

func FuzzParseMessage(f *testing.F) {
	for _, m := range recorded(f, "netlink-mixed.bin") {
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Entry
		if err := ParseMessage(b, &e); err != nil {
			return
		}
		// A parsed entry must print without panicking.
		_ = e.String()
	})
}

func BenchmarkParseRecorded(b *testing.B) {
	msgs := recorded(b, "netlink-mixed.bin")
	var e Entry
	b.ReportAllocs()
	for b.Loop() {
		for _, m := range msgs {
			if err := ParseMessage(m, &e); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(msgs)), "ns/entry")
}

func TestAppendMessageRoundTrip(t *testing.T) {
	var e Entry
	for _, m := range recorded(t, "netlink-mixed.bin") {
		if err := ParseMessage(m, &e); err != nil {
			t.Fatal(err)
		}
		var out Entry
		if err := ParseMessage(AppendMessage(nil, &e), &out); err != nil {
			t.Fatal(err)
		}
		if out != e {
			t.Errorf("round trip of %v:\n got %+v\nwant %+v", &e, out, e)
		}
	}
}
