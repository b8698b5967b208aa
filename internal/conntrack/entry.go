// Package conntrack reads and changes the kernel's connection tracking table
// over ctnetlink, with a /proc/net/nf_conntrack fallback.
//
// The dump path is the hot path of every ctguard scan: it streams entries
// into a callback, reusing one Entry and one receive buffer, and must never
// allocate per entry or build the table in memory.
package conntrack

import (
	"fmt"
	"net/netip"
)

// L4 protocol numbers that ctguard distinguishes.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// Address families as in nfgen_family.
const (
	FamilyIPv4 = 2  // AF_INET
	FamilyIPv6 = 10 // AF_INET6
)

// TCPState is the conntrack TCP state (enum tcp_conntrack).
type TCPState uint8

// TCP states, numbered as the kernel numbers them.
const (
	TCPNone TCPState = iota
	TCPSynSent
	TCPSynRecv
	TCPEstablished
	TCPFinWait
	TCPCloseWait
	TCPLastAck
	TCPTimeWait
	TCPClose
	TCPSynSent2
	NumTCPStates
)

var tcpStateNames = [NumTCPStates]string{
	"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT",
	"CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2",
}

func (s TCPState) String() string {
	if s < NumTCPStates {
		return tcpStateNames[s]
	}
	return fmt.Sprintf("TCP_STATE_%d", uint8(s))
}

// ParseTCPState maps a state name as printed by /proc and conntrack-tools.
func ParseTCPState(name []byte) (TCPState, bool) {
	for i, n := range tcpStateNames {
		if string(name) == n {
			return TCPState(i), true
		}
	}
	if string(name) == "LISTEN" { // older kernels' name for SYN_SENT2's slot
		return TCPSynSent2, true
	}
	return 0, false
}

// Status holds the IPS_* status bits of an entry.
type Status uint32

// Status bits (include/uapi/linux/netfilter/nf_conntrack_common.h).
const (
	StatusExpected  Status = 1 << 0
	StatusSeenReply Status = 1 << 1
	StatusAssured   Status = 1 << 2
	StatusConfirmed Status = 1 << 3
	StatusSrcNAT    Status = 1 << 4
	StatusDstNAT    Status = 1 << 5
	StatusDying     Status = 1 << 9
	StatusFixedTime Status = 1 << 10
	StatusTemplate  Status = 1 << 11
	StatusOffload   Status = 1 << 14
	StatusHWOffload Status = 1 << 15
)

// Has reports whether all bits of b are set.
func (s Status) Has(b Status) bool { return s&b == b }

// Tuple is one direction of a connection.
type Tuple struct {
	Src, Dst netip.Addr
	SrcPort  uint16 // TCP/UDP/SCTP/DCCP/UDPLite
	DstPort  uint16
	ICMPID   uint16 // ICMP and ICMPv6
	ICMPType uint8
	ICMPCode uint8
	Zone     uint16 // per-direction zone, rarely set
}

// Counters are the per-direction accounting counters (nf_conntrack_acct=1).
type Counters struct {
	Packets, Bytes uint64
}

// Entry is one conntrack table entry. The dump path reuses one Entry for
// every message: copy what you keep.
type Entry struct {
	Family   uint8 // FamilyIPv4 or FamilyIPv6
	Proto    uint8 // L4 protocol number (Orig and Reply agree)
	Orig     Tuple
	Reply    Tuple
	TCPState TCPState // valid when Proto == ProtoTCP and HasTCPState
	Status   Status
	Timeout  uint32 // remaining seconds
	Mark     uint32
	Zone     uint16
	ID       uint32

	HasTCPState bool
	HasCounters bool // acct was on when the entry was dumped
	OrigCount   Counters
	ReplyCount  Counters
}

// ProtoName returns the protocol name as /proc prints it.
func ProtoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP:
		return "icmp"
	case ProtoICMPv6:
		return "icmpv6"
	case 132:
		return "sctp"
	case 33:
		return "dccp"
	case 136:
		return "udplite"
	case 47:
		return "gre"
	}
	return "unknown"
}

// hasPorts reports whether the protocol's tuple carries ports.
func hasPorts(p uint8) bool {
	switch p {
	case ProtoTCP, ProtoUDP, 132, 33, 136:
		return true
	}
	return false
}

func (e *Entry) String() string {
	s := fmt.Sprintf("%s %s", ProtoName(e.Proto), e.Orig.Src)
	if hasPorts(e.Proto) {
		s += fmt.Sprintf(":%d -> %s:%d", e.Orig.SrcPort, e.Orig.Dst, e.Orig.DstPort)
	} else {
		s += " -> " + e.Orig.Dst.String()
	}
	if e.HasTCPState {
		s += " " + e.TCPState.String()
	}
	return s + fmt.Sprintf(" timeout=%d status=%#x", e.Timeout, uint32(e.Status))
}
