package conntrack

import "encoding/binary"

// ctnetlink wire constants (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	nfnlSubsysCTNetlink = 1

	ctMsgNew      = 0
	ctMsgGet      = 1
	ctMsgDelete   = 2
	ctMsgStatsCPU = 4
	ctMsgStats    = 5

	ctaTupleOrig     = 1
	ctaTupleReply    = 2
	ctaStatus        = 3
	ctaProtoinfo     = 4
	ctaTimeout       = 7
	ctaMark          = 8
	ctaCountersOrig  = 9
	ctaCountersReply = 10
	ctaID            = 12
	ctaZone          = 18
	ctaMarkMask      = 21
	ctaFilter        = 25
	ctaStatusMask    = 26

	ctaTupleIP    = 1
	ctaTupleProto = 2
	ctaTupleZone  = 3

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum      = 1
	ctaProtoSrcPort  = 2
	ctaProtoDstPort  = 3
	ctaProtoICMPID   = 4
	ctaProtoICMPType = 5
	ctaProtoICMPCode = 6
	ctaProtoICMP6ID  = 7
	ctaProtoICMP6Typ = 8
	ctaProtoICMP6Cod = 9

	ctaProtoinfoTCP      = 1
	ctaProtoinfoTCPState = 1

	ctaCountersPackets   = 1
	ctaCountersBytes     = 2
	ctaCounters32Packets = 3
	ctaCounters32Bytes   = 4

	ctaFilterOrigFlags = 1
	filterIPSrc        = 1 << 0

	// CTA_STATS_* of IPCTNL_MSG_CT_GET_STATS_CPU.
	ctaStatsFound         = 2
	ctaStatsInvalid       = 4
	ctaStatsInsert        = 8
	ctaStatsInsertFailed  = 9
	ctaStatsDrop          = 10
	ctaStatsEarlyDrop     = 11
	ctaStatsError         = 12
	ctaStatsSearchRestart = 13
	ctaStatsClashResolve  = 14
	ctaStatsChainTooLong  = 15

	// CTA_STATS_GLOBAL_* of IPCTNL_MSG_CT_GET_STATS.
	ctaStatsGlobalEntries = 1
	ctaStatsGlobalMax     = 2

	nlaTypeMask = 0x3fff
	nlaFNested  = 0x8000

	nlmsgHdrLen  = 16
	nfgenHdrLen  = 4
	nlmsgError   = 2
	nlmsgDone    = 3
	nlmFRequest  = 0x1
	nlmFMulti    = 0x2
	nlmFAck      = 0x4
	nlmFDump     = 0x300
	nlmFCreate   = 0x400
	nlmFExcl     = 0x200
	nlmFCapped   = 0x100 // in NLMSG_ERROR flags: the request was not echoed
	nlmFAckTLVs  = 0x200 // in NLMSG_ERROR flags: extended ack attributes follow
	nlmsgerrMsg  = 1     // NLMSGERR_ATTR_MSG
	netlinkCapAk = 10    // NETLINK_CAP_ACK
	netlinkExtAk = 11    // NETLINK_EXT_ACK
)

var (
	ne = binary.NativeEndian
	be = binary.BigEndian
)

// attrs iterates over netlink attributes without allocating.
type attrs struct {
	b   []byte
	typ uint16
	val []byte
	err bool
}

// next advances to the next attribute; it returns false at the end or on a
// malformed attribute (then a.err is set).
func (a *attrs) next() bool {
	if len(a.b) < 4 {
		if len(a.b) != 0 {
			a.err = true
		}
		return false
	}
	l := int(ne.Uint16(a.b))
	if l < 4 || l > len(a.b) {
		a.err = true
		return false
	}
	a.typ = ne.Uint16(a.b[2:]) & nlaTypeMask
	a.val = a.b[4:l]
	al := (l + 3) &^ 3
	if al > len(a.b) {
		al = len(a.b)
	}
	a.b = a.b[al:]
	return true
}

func msgType(m uint8) uint16 { return nfnlSubsysCTNetlink<<8 | uint16(m) }
