package conntrack

import "net/netip"

// builder appends netlink messages and attributes to a reusable buffer.
type builder struct {
	b     []byte
	msg   int   // offset of the current message
	nests []int // offsets of open nested attributes
}

func (m *builder) reset() { m.b, m.nests = m.b[:0], m.nests[:0] }

// begin starts a ctnetlink message.
func (m *builder) begin(ctMsg uint8, flags uint16, seq uint32, family, version uint8) {
	m.msg = len(m.b)
	var h [nlmsgHdrLen + nfgenHdrLen]byte
	ne.PutUint16(h[4:], msgType(ctMsg))
	ne.PutUint16(h[6:], flags)
	ne.PutUint32(h[8:], seq)
	h[16] = family
	h[17] = version
	m.b = append(m.b, h[:]...)
}

// end fixes the current message's length.
func (m *builder) end() { ne.PutUint32(m.b[m.msg:], uint32(len(m.b)-m.msg)) }

func (m *builder) attr(typ uint16, v []byte) {
	var h [4]byte
	ne.PutUint16(h[:], uint16(4+len(v)))
	ne.PutUint16(h[2:], typ)
	m.b = append(m.b, h[:]...)
	m.b = append(m.b, v...)
	for len(m.b)%4 != 0 {
		m.b = append(m.b, 0)
	}
}

func (m *builder) u8(typ uint16, v uint8) { m.attr(typ, []byte{v}) }

func (m *builder) u16be(typ uint16, v uint16) {
	var x [2]byte
	be.PutUint16(x[:], v)
	m.attr(typ, x[:])
}

func (m *builder) u32be(typ uint16, v uint32) {
	var x [4]byte
	be.PutUint32(x[:], v)
	m.attr(typ, x[:])
}

func (m *builder) u32ne(typ uint16, v uint32) {
	var x [4]byte
	ne.PutUint32(x[:], v)
	m.attr(typ, x[:])
}

func (m *builder) nest(typ uint16) {
	m.nests = append(m.nests, len(m.b))
	m.attr(typ|nlaFNested, nil)
}

func (m *builder) endNest() {
	off := m.nests[len(m.nests)-1]
	m.nests = m.nests[:len(m.nests)-1]
	ne.PutUint16(m.b[off:], uint16(len(m.b)-off))
}

func (m *builder) addr(typ4, typ6 uint16, a netip.Addr) {
	if a.Is4() {
		v := a.As4()
		m.attr(typ4, v[:])
	} else {
		v := a.As16()
		m.attr(typ6, v[:])
	}
}

// tuple encodes a full tuple (addresses and protocol part).
func (m *builder) tuple(typ uint16, t *Tuple, proto uint8) {
	m.nest(typ)
	m.nest(ctaTupleIP)
	if t.Src.IsValid() {
		m.addr(ctaIPv4Src, ctaIPv6Src, t.Src)
	}
	if t.Dst.IsValid() {
		m.addr(ctaIPv4Dst, ctaIPv6Dst, t.Dst)
	}
	m.endNest()
	m.nest(ctaTupleProto)
	m.u8(ctaProtoNum, proto)
	switch {
	case hasPorts(proto):
		m.u16be(ctaProtoSrcPort, t.SrcPort)
		m.u16be(ctaProtoDstPort, t.DstPort)
	case proto == ProtoICMP:
		m.u16be(ctaProtoICMPID, t.ICMPID)
		m.u8(ctaProtoICMPType, t.ICMPType)
		m.u8(ctaProtoICMPCode, t.ICMPCode)
	case proto == ProtoICMPv6:
		m.u16be(ctaProtoICMP6ID, t.ICMPID)
		m.u8(ctaProtoICMP6Typ, t.ICMPType)
		m.u8(ctaProtoICMP6Cod, t.ICMPCode)
	}
	m.endNest()
	m.endNest()
}

// sourceFilter adds a kernel-side match on one IPv4 original source: the
// tuple carrying it and CTA_FILTER saying only that field counts. Never for
// IPv6: the kernel's IPv6 filter is inverted.
func (m *builder) sourceFilter(src netip.Addr) {
	m.nest(ctaTupleOrig)
	m.nest(ctaTupleIP)
	m.addr(ctaIPv4Src, ctaIPv6Src, src)
	m.endNest()
	m.endNest()
	m.nest(ctaFilter)
	m.u32ne(ctaFilterOrigFlags, filterIPSrc)
	m.endNest()
}
