package conntrack

// AppendMessage appends e encoded as the payload of an IPCTNL_MSG_CT_NEW
// message (nfgenmsg and attributes, laid out as the kernel lays out a dump)
// to b. It serves tests, benchmarks and saved snapshots.
func AppendMessage(b []byte, e *Entry) []byte {
	m := builder{b: b}
	m.msg = len(m.b)
	m.b = append(m.b, e.Family, 0, 0, 0)
	m.tuple(ctaTupleOrig, &e.Orig, e.Proto)
	m.tuple(ctaTupleReply, &e.Reply, e.Proto)
	m.u32be(ctaStatus, uint32(e.Status))
	m.u32be(ctaTimeout, e.Timeout)
	m.u32be(ctaMark, e.Mark)
	if e.HasCounters {
		for i, c := range []*Counters{&e.OrigCount, &e.ReplyCount} {
			m.nest(uint16(ctaCountersOrig + i))
			var x [8]byte
			be.PutUint64(x[:], c.Packets)
			m.attr(ctaCountersPackets, x[:])
			be.PutUint64(x[:], c.Bytes)
			m.attr(ctaCountersBytes, x[:])
			m.endNest()
		}
	}
	if e.Zone != 0 {
		m.u16be(ctaZone, e.Zone)
	}
	m.u32be(ctaID, e.ID)
	if e.Proto == ProtoTCP && e.HasTCPState {
		m.nest(ctaProtoinfo)
		m.nest(ctaProtoinfoTCP)
		m.u8(ctaProtoinfoTCPState, uint8(e.TCPState))
		m.endNest()
		m.endNest()
	}
	return m.b
}
