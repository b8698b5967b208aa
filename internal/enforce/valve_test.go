package enforce

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/store"
)

func entry(src string, dport uint16, sport uint16, timeout uint32) conntrack.Entry {
	return conntrack.Entry{Proto: conntrack.ProtoTCP, Timeout: timeout, TCPState: conntrack.TCPEstablished,
		Orig: conntrack.Tuple{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr("192.0.2.1"), SrcPort: sport, DstPort: dport}}
}

// TestValve: the valve deletes the highest-ranked entries of its holders
// up to Free, never a TCP entry to an SSH port and never an allowlisted
// holder's, through the purger seam.
func TestValve(t *testing.T) {
	tbl := &FakeTable{}
	for i := range 10 {
		tbl.Table = append(tbl.Table, entry("198.51.100.7", 443, uint16(1000+i), uint32(1000*i))) // rank = timeout here
	}
	tbl.Table = append(tbl.Table,
		entry("198.51.100.7", 22, 5000, 999999),  // its SSH session: never
		entry("192.0.2.254", 443, 5001, 999999),  // the gateway: allowlisted
		entry("203.0.113.50", 443, 5002, 999998), // not a holder
	)
	st, err := store.Open(t.TempDir(), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	e := New(Config{Store: st, Firewall: NewFake(nil), Purger: tbl, Now: time.Now, Allow: allow.Config{
		ProcRoot: "../allow/testdata/proc", ResolvConf: "/nonexistent",
		InterfaceAddrs: func() ([]netip.Prefix, error) { return []netip.Prefix{pfx("192.0.2.1/24")}, nil },
	}})
	rank := func(e *conntrack.Entry) (uint64, bool) { return uint64(e.Timeout), e.Timeout != 0 }
	r, err := e.Valve(context.Background(), ValveRequest{
		Holders: []netip.Prefix{pfx("198.51.100.7"), pfx("192.0.2.254")}, Free: 4, Rank: rank})
	if err != nil || r.Deleted != 4 || r.Candidates != 9 {
		t.Fatalf("valve: %+v %v (want 4 deleted of 9 candidates)", r, err)
	}
	var left []string
	for _, en := range tbl.Table {
		left = append(left, fmt.Sprintf("%s:%d/%d", en.Orig.Src, en.Orig.DstPort, en.Timeout))
	}
	for _, gone := range []string{"198.51.100.7:443/9000", "198.51.100.7:443/8000", "198.51.100.7:443/7000", "198.51.100.7:443/6000"} {
		if slices.Contains(left, gone) {
			t.Errorf("%s should have gone first", gone)
		}
	}
	for _, kept := range []string{"198.51.100.7:22/999999", "192.0.2.254:443/999999", "203.0.113.50:443/999998", "198.51.100.7:443/5000"} {
		if !slices.Contains(left, kept) {
			t.Errorf("%s was deleted", kept)
		}
	}
	if _, err := New(Config{Store: st, Firewall: NewFake(nil), Purger: &FakePurger{}}).Valve(context.Background(),
		ValveRequest{Holders: []netip.Prefix{pfx("198.51.100.7")}, Free: 1, Rank: rank}); err != ErrNoEntryPurger {
		t.Fatalf("purger without single deletes: %v", err)
	}
}

// TestValveSweep: when many sources each hold a little, the sweep takes
// the highest-ranked entries of any source, never an allowlisted one's and
// never an SSH entry.
func TestValveSweep(t *testing.T) {
	tbl := &FakeTable{}
	for i := range 10 {
		tbl.Table = append(tbl.Table, entry(fmt.Sprintf("198.51.100.%d", i+1), 443, 1000, uint32(1000*(i+1)))) // ten single-entry sources
	}
	tbl.Table = append(tbl.Table,
		entry("203.0.113.9", 22, 5000, 999999),  // SSH: never
		entry("192.0.2.254", 443, 5001, 999999), // the gateway: allowlisted
	)
	st, err := store.Open(t.TempDir(), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	e := New(Config{Store: st, Firewall: NewFake(nil), Purger: tbl, Now: time.Now, Allow: allow.Config{
		ProcRoot: "../allow/testdata/proc", ResolvConf: "/nonexistent",
		InterfaceAddrs: func() ([]netip.Prefix, error) { return []netip.Prefix{pfx("192.0.2.1/24")}, nil },
	}})
	rank := func(e *conntrack.Entry) (uint64, bool) { return uint64(e.Timeout), true }
	if r, err := e.Valve(context.Background(), ValveRequest{Free: 3, Rank: rank}); err != nil || r.Deleted != 0 {
		t.Fatalf("no holders and no sweep: %+v %v", r, err)
	}
	r, err := e.Valve(context.Background(), ValveRequest{Free: 3, Rank: rank, Sweep: true})
	if err != nil || r.Deleted != 3 || r.Candidates != 10 {
		t.Fatalf("sweep: %+v %v (want 3 deleted of 10 candidates)", r, err)
	}
	var left []string
	for _, en := range tbl.Table {
		left = append(left, en.Orig.Src.String())
	}
	for _, gone := range []string{"198.51.100.10", "198.51.100.9", "198.51.100.8"} {
		if slices.Contains(left, gone) {
			t.Errorf("%s should have gone first", gone)
		}
	}
	for _, kept := range []string{"203.0.113.9", "192.0.2.254", "198.51.100.1"} {
		if !slices.Contains(left, kept) {
			t.Errorf("%s was deleted", kept)
		}
	}
}
