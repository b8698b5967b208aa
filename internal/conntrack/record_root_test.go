package conntrack

import (
	"context"
	"encoding/binary"
	"os"
	"testing"

	"github.com/ctguard/ctguard/internal/testutil"
)

// mixedInserts mirror testdata/mixed-nf_conntrack.txt as conntrack -I calls,
// for recording real kernel messages of every shape.
var mixedInserts = [][]string{
	{"-p", "tcp", "-s", "192.0.2.66", "-d", "192.0.2.10", "--sport", "20001", "--dport", "443", "-t", "430999", "--state", "ESTABLISHED", "-u", "SEEN_REPLY,ASSURED"},
	{"-p", "icmpv6", "-s", "2001:db8::68", "-d", "2001:db8::10", "--icmpv6-type", "128", "--icmpv6-code", "0", "--icmpv6-id", "9", "-t", "28"},
	{"-p", "icmp", "-s", "192.0.2.97", "-d", "192.0.2.10", "--icmp-type", "8", "--icmp-code", "0", "--icmp-id", "77", "-t", "28"},
	{"-p", "tcp", "-s", "192.0.2.77", "-d", "192.0.2.10", "--sport", "30001", "--dport", "443", "-t", "59", "--state", "SYN_RECV"},
	{"-p", "udp", "-s", "192.0.2.98", "-d", "192.0.2.10", "--sport", "5354", "--dport", "53", "-t", "169", "-u", "SEEN_REPLY,ASSURED"},
	{"-p", "udp", "-s", "192.0.2.99", "-d", "192.0.2.10", "--sport", "5353", "--dport", "443", "-t", "29"},
	{"-p", "tcp", "-s", "192.0.2.10", "-d", "198.51.100.5", "--sport", "41000", "--dport", "5432", "-t", "431499", "--state", "ESTABLISHED", "-u", "SEEN_REPLY,ASSURED", "-m", "7"},
	{"-p", "tcp", "-s", "192.0.2.78", "-d", "192.0.2.10", "--sport", "30002", "--dport", "80", "-t", "99", "--state", "TIME_WAIT", "-u", "SEEN_REPLY,ASSURED"},
	{"-p", "tcp", "-s", "2001:db8::66", "-d", "2001:db8::10", "--sport", "20001", "--dport", "443", "-t", "430999", "--state", "ESTABLISHED", "-u", "SEEN_REPLY,ASSURED"},
	{"-p", "udp", "-s", "2001:db8::67", "-d", "2001:db8::10", "--sport", "20001", "--dport", "443", "-t", "29"},
}

// TestRootRecordMixed re-records testdata/netlink-mixed.bin from a real
// kernel when CTGUARD_RECORD=1; the unit tests parse that recording.
func TestRootRecordMixed(t *testing.T) {
	if os.Getenv("CTGUARD_RECORD") != "1" {
		t.Skip("set CTGUARD_RECORD=1 to re-record testdata/netlink-mixed.bin")
	}
	testutil.RequireRoot(t, "conntrack")
	ns := testutil.NewNS(t)
	ns.MustRun(t, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
	for _, args := range mixedInserts {
		ns.MustRun(t, append([]string{"conntrack", "-I"}, args...)...)
	}
	c := openIn(t, ns)
	var out []byte
	c.mu.Lock()
	seq := c.nextSeq()
	c.buildDump(seq, &DumpOptions{})
	err := c.dump(context.Background(), "record", seq, func(typ uint16, p []byte) error {
		out = binary.LittleEndian.AppendUint32(out, uint32(len(p)))
		out = append(out, p...)
		return nil
	})
	c.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("testdata/netlink-mixed.bin", out, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("recorded %d bytes", len(out))
}
