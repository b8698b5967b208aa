package conntrack

import (
	"errors"
	"net/netip"
)

// ErrMalformed reports a ctnetlink message that could not be parsed.
var ErrMalformed = errors.New("malformed ctnetlink message")

// ParseMessage decodes the payload of one IPCTNL_MSG_CT_NEW message (the
// nfgenmsg header and its attributes, without the nlmsghdr) into e. e is
// reset first. It does not allocate.
func ParseMessage(b []byte, e *Entry) error {
	if len(b) < nfgenHdrLen {
		return ErrMalformed
	}
	*e = Entry{Family: b[0]}
	a := attrs{b: b[nfgenHdrLen:]}
	for a.next() {
		v := a.val
		switch a.typ {
		case ctaTupleOrig:
			if !parseTuple(v, &e.Orig, &e.Proto) {
				return ErrMalformed
			}
		case ctaTupleReply:
			var p uint8
			if !parseTuple(v, &e.Reply, &p) {
				return ErrMalformed
			}
		case ctaStatus:
			if len(v) < 4 {
				return ErrMalformed
			}
			e.Status = Status(be.Uint32(v))
		case ctaTimeout:
			if len(v) < 4 {
				return ErrMalformed
			}
			e.Timeout = be.Uint32(v)
		case ctaMark:
			if len(v) < 4 {
				return ErrMalformed
			}
			e.Mark = be.Uint32(v)
		case ctaID:
			if len(v) < 4 {
				return ErrMalformed
			}
			e.ID = be.Uint32(v)
		case ctaZone:
			if len(v) < 2 {
				return ErrMalformed
			}
			e.Zone = be.Uint16(v)
		case ctaProtoinfo:
			if !parseProtoinfo(v, e) {
				return ErrMalformed
			}
		case ctaCountersOrig:
			if !parseCounters(v, &e.OrigCount) {
				return ErrMalformed
			}
			e.HasCounters = true
		case ctaCountersReply:
			if !parseCounters(v, &e.ReplyCount) {
				return ErrMalformed
			}
			e.HasCounters = true
		}
	}
	if a.err {
		return ErrMalformed
	}
	return nil
}

func parseTuple(b []byte, t *Tuple, proto *uint8) bool {
	a := attrs{b: b}
	for a.next() {
		switch a.typ {
		case ctaTupleIP:
			ip := attrs{b: a.val}
			for ip.next() {
				v := ip.val
				switch ip.typ {
				case ctaIPv4Src, ctaIPv4Dst:
					if len(v) != 4 {
						return false
					}
					addr := netip.AddrFrom4([4]byte(v))
					if ip.typ == ctaIPv4Src {
						t.Src = addr
					} else {
						t.Dst = addr
					}
				case ctaIPv6Src, ctaIPv6Dst:
					if len(v) != 16 {
						return false
					}
					addr := netip.AddrFrom16([16]byte(v))
					if ip.typ == ctaIPv6Src {
						t.Src = addr
					} else {
						t.Dst = addr
					}
				}
			}
			if ip.err {
				return false
			}
		case ctaTupleProto:
			p := attrs{b: a.val}
			for p.next() {
				v := p.val
				switch p.typ {
				case ctaProtoNum:
					if len(v) < 1 {
						return false
					}
					*proto = v[0]
				case ctaProtoSrcPort:
					if len(v) < 2 {
						return false
					}
					t.SrcPort = be.Uint16(v)
				case ctaProtoDstPort:
					if len(v) < 2 {
						return false
					}
					t.DstPort = be.Uint16(v)
				case ctaProtoICMPID, ctaProtoICMP6ID:
					if len(v) < 2 {
						return false
					}
					t.ICMPID = be.Uint16(v)
				case ctaProtoICMPType, ctaProtoICMP6Typ:
					if len(v) < 1 {
						return false
					}
					t.ICMPType = v[0]
				case ctaProtoICMPCode, ctaProtoICMP6Cod:
					if len(v) < 1 {
						return false
					}
					t.ICMPCode = v[0]
				}
			}
			if p.err {
				return false
			}
		case ctaTupleZone:
			if len(a.val) < 2 {
				return false
			}
			t.Zone = be.Uint16(a.val)
		}
	}
	return !a.err
}

func parseProtoinfo(b []byte, e *Entry) bool {
	a := attrs{b: b}
	for a.next() {
		if a.typ != ctaProtoinfoTCP {
			continue
		}
		t := attrs{b: a.val}
		for t.next() {
			if t.typ == ctaProtoinfoTCPState {
				if len(t.val) < 1 {
					return false
				}
				e.TCPState = TCPState(t.val[0])
				e.HasTCPState = true
			}
		}
		if t.err {
			return false
		}
	}
	return !a.err
}

func parseCounters(b []byte, c *Counters) bool {
	a := attrs{b: b}
	for a.next() {
		v := a.val
		switch a.typ {
		case ctaCountersPackets, ctaCountersBytes:
			if len(v) < 8 {
				return false
			}
			if a.typ == ctaCountersPackets {
				c.Packets = be.Uint64(v)
			} else {
				c.Bytes = be.Uint64(v)
			}
		case ctaCounters32Packets, ctaCounters32Bytes:
			if len(v) < 4 {
				return false
			}
			if a.typ == ctaCounters32Packets {
				c.Packets = uint64(be.Uint32(v))
			} else {
				c.Bytes = uint64(be.Uint32(v))
			}
		}
	}
	return !a.err
}
