package enforce

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// recorder stands in for the kernel: it keeps every message of a batch and
// acks each one.
type recorder struct{ msgs []netlink.Message }

func (r *recorder) dial(req []netlink.Message) ([]netlink.Message, error) {
	r.msgs = append(r.msgs, req...)
	var acks []netlink.Message
	for _, m := range req {
		if m.Header.Flags&netlink.Acknowledge != 0 {
			acks = append(acks, netlink.Message{
				Header: netlink.Header{Type: netlink.Error, Sequence: m.Header.Sequence, PID: m.Header.PID},
				Data:   make([]byte, 4),
			})
		}
	}
	return acks, nil
}

type elemMsg struct {
	set                string
	elems, ends, bytes int
	endsFirst          bool // an interval end opens the message: a pair was split
}

func decodeElemMsgs(t *testing.T, msgs []netlink.Message, typ uint16) []elemMsg {
	t.Helper()
	var out []elemMsg
	for _, m := range msgs {
		if uint16(m.Header.Type) != uint16(unix.NFNL_SUBSYS_NFTABLES<<8|int(typ)) {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			t.Fatal(err)
		}
		em := elemMsg{bytes: len(m.Data)}
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_SET_ELEM_LIST_SET:
				em.set = ad.String()
			case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
				if len(ad.Bytes()) > 0xffff {
					t.Fatalf("element list of %d bytes overflows the 16-bit attribute length", len(ad.Bytes()))
				}
				ad.Nested(func(nd *netlink.AttributeDecoder) error {
					for nd.Next() {
						end := false
						nd.Nested(func(ed *netlink.AttributeDecoder) error {
							for ed.Next() {
								if ed.Type() == unix.NFTA_SET_ELEM_FLAGS {
									end = true
								}
							}
							return nil
						})
						if end {
							if em.elems == 0 {
								em.endsFirst = true
							}
							em.ends++
						}
						em.elems++
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			t.Fatal(err)
		}
		out = append(out, em)
	}
	return out
}

func TestChunkingStaysUnderMessageLimits(t *testing.T) {
	rec := &recorder{}
	n := NewNFT(nil, NFTOptions{})
	n.testDial = rec.dial
	var add []Element
	var del []Element
	a4 := netip.MustParseAddr("198.18.0.0")
	for range 100_000 {
		add = append(add, Element{Prefix: netip.PrefixFrom(a4, 32), TTL: time.Hour})
		a4 = a4.Next()
	}
	for i := range 20_000 {
		p := netip.PrefixFrom(netip.MustParseAddr(fmt.Sprintf("2001:db8:1::%x", i)), 128)
		add = append(add, Element{Prefix: p, TTL: time.Hour})
		del = append(del, Element{Prefix: p})
	}
	for i := range 5_000 {
		p := netip.MustParsePrefix(fmt.Sprintf("2001:db8:2:%x::/64", i))
		add = append(add, Element{Prefix: p, TTL: time.Hour})
		del = append(del, Element{Prefix: p})
	}
	for i := range 3_000 {
		add = append(add, Element{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i / 64), byte(i%64) * 4}), 30), TTL: time.Hour})
	}
	if err := n.Apply(context.Background(), Change{Delete: del, Add: add}); err != nil {
		t.Fatal(err)
	}
	want := map[string][2]int{ // set -> elements, interval ends
		SetBan4: {100_000, 0}, SetBan6: {20_000, 0}, SetNet6: {10_000, 5_000}, SetNet4: {6_000, 3_000},
	}
	got := map[string][2]int{}
	for _, m := range decodeElemMsgs(t, rec.msgs, unix.NFT_MSG_NEWSETELEM) {
		if m.endsFirst {
			t.Fatalf("set %s: a prefix's start and end were split across messages", m.set)
		}
		if m.bytes > maxElemListBytes+256 {
			t.Fatalf("set %s: message of %d bytes", m.set, m.bytes)
		}
		g := got[m.set]
		got[m.set] = [2]int{g[0] + m.elems, g[1] + m.ends}
	}
	for s, w := range want {
		if got[s] != w {
			t.Errorf("set %s: added %v (elements, ends), want %v", s, got[s], w)
		}
	}
	dels := 0
	for _, m := range decodeElemMsgs(t, rec.msgs, unix.NFT_MSG_DELSETELEM) {
		dels += m.elems
	}
	if dels != 30_000 {
		t.Errorf("deleted %d elements, want 30000 (20k addresses + 5k start/end pairs)", dels)
	}
	// One batch: everything sits between a single BEGIN and END.
	begins := 0
	for _, m := range rec.msgs {
		if m.Header.Type == netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN) {
			begins++
		}
	}
	if begins != 1 {
		t.Errorf("%d batches, want 1 atomic batch", begins)
	}
}

func TestEncode(t *testing.T) {
	for _, c := range []struct {
		p    string
		keys []string
	}{
		{"192.0.2.7/32", []string{"192.0.2.7"}},
		{"192.0.2.0/24", []string{"192.0.2.0", "192.0.3.0 end"}},
		{"255.255.255.0/24", []string{"255.255.255.0"}}, // runs to the top: no end
		{"2001:db8::/32", []string{"2001:db8::", "2001:db9:: end"}},
		{"2001:db8::1/128", []string{"2001:db8::1"}},
	} {
		els := encode(pfx(c.p), time.Hour)
		var got []string
		for _, e := range els {
			a, _ := netip.AddrFromSlice(e.Key)
			s := a.String()
			if e.IntervalEnd {
				s += " end"
				if e.Timeout != 0 {
					t.Errorf("%s: interval end carries a timeout (the kernel refuses it)", c.p)
				}
			} else if e.Timeout != time.Hour {
				t.Errorf("%s: start timeout %v", c.p, e.Timeout)
			}
			got = append(got, s)
		}
		if fmt.Sprint(got) != fmt.Sprint(c.keys) {
			t.Errorf("encode(%s) = %v, want %v", c.p, got, c.keys)
		}
	}
	if e := encode(pfx("192.0.2.7"), 300*time.Microsecond); e[0].Timeout != time.Millisecond {
		t.Errorf("sub-millisecond TTL became %v: 0 would mean no timeout", e[0].Timeout)
	}
}
