package enforce

// The ipset netlink protocol (linux/netfilter/ipset/ip_set.h), spoken
// directly over NETLINK_NETFILTER with github.com/mdlayher/netlink, the
// library nft.go already uses.
//
// github.com/vishvananda/netlink v1.3.1 has IpsetCreate/Add/Del/List/Swap/
// Destroy, but not what a firewall of 100,000 bans needs: it sends one
// element per message and waits for its ack (the package-level functions
// even open a socket per call), it cannot list a set's header without
// dumping every element (IPSET_FLAG_LIST_HEADER, which the cheap Check needs),
// and it prints attributes it does not know (bucketsize, initval: every
// current kernel sends them) through the standard log package. The part of
// the protocol ctguard uses is small, so it lives here: batched ADT
// messages (thousands of elements each) pipelined on one socket, header
// listing, and element dumps with their remaining timeouts.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

const (
	// ipsetProtocol is the protocol version ctguard speaks. 6 is the
	// minimum every kernel since 3.x accepts (4.9 speaks only 6; current
	// kernels 6 and 7). Version 7 changed only commands ctguard does not use.
	ipsetProtocol = 6

	ipsetCmdProtocol = 1
	ipsetCmdCreate   = 2
	ipsetCmdDestroy  = 3
	ipsetCmdRename   = 5
	ipsetCmdSwap     = 6
	ipsetCmdList     = 7
	ipsetCmdAdd      = 9
	ipsetCmdDel      = 10
	ipsetCmdType     = 13

	// Command-level attributes.
	ipsetAttrProtocol    = 1
	ipsetAttrSetName     = 2
	ipsetAttrTypeName    = 3
	ipsetAttrSetName2    = ipsetAttrTypeName
	ipsetAttrRevision    = 4
	ipsetAttrFamily      = 5
	ipsetAttrFlags       = 6
	ipsetAttrData        = 7
	ipsetAttrADT         = 8
	ipsetAttrLineNo      = 9
	ipsetAttrProtocolMin = 10
	ipsetAttrRevisionMin = ipsetAttrProtocolMin

	// Data (CADT and create) attributes.
	ipsetAttrIP         = 1
	ipsetAttrCIDR       = 3
	ipsetAttrTimeout    = 6
	ipsetAttrCadtFlags  = 8
	ipsetAttrInitVal    = 17
	ipsetAttrHashSize   = 18
	ipsetAttrMaxElem    = 19
	ipsetAttrNetmask    = 20
	ipsetAttrBucketSize = 21
	ipsetAttrElements   = 24
	ipsetAttrReferences = 25
	ipsetAttrMemSize    = 26
	ipsetAttrComment    = 26 // in ADT data, not in the create header

	ipsetAttrIPAddrIPv4 = 1
	ipsetAttrIPAddrIPv6 = 2

	ipsetFlagListHeader  = 1 << 2
	ipsetFlagWithComment = 1 << 4

	nlaFNested       = 1 << 15
	nlaFNetByteOrder = 1 << 14
	nlaTypeMask      = ^uint16(nlaFNested | nlaFNetByteOrder)
)

// ipsetMaxTimeout is the longest element timeout the kernel keeps
// (IPSET_MAX_TIMEOUT, (UINT_MAX>>1)/MSEC_PER_SEC seconds: 24 days 20 h);
// longer ones are silently cut to it.
const ipsetMaxTimeout = 2147483

// ipsetErrno is one of ipset's own error numbers (4096 and up), which the
// kernel returns where other subsystems return errnos.
type ipsetErrno int

// errIPSetHashFull: the set holds maxelem elements.
const errIPSetHashFull ipsetErrno = 4352

var ipsetErrText = map[ipsetErrno]string{
	4097: "kernel and ctguard disagree on the ipset protocol",
	4098: "the kernel has no such set type",
	4099: "the kernel's maximum number of sets is reached",
	4100: "set is in use by a rule or another set",
	4101: "the second set does not exist",
	4102: "the sets have different types or families",
	4103: "already exists",
	4104: "invalid CIDR prefix length",
	4105: "invalid netmask",
	4106: "invalid family",
	4107: "the set has no timeout support",
	4108: "set is referenced and cannot be destroyed",
	4109: "invalid IPv4 address",
	4110: "invalid IPv6 address",
	4111: "the set has no counter support",
	4112: "the set has no comment support",
	4352: "set is full (maxelem reached)",
	4353: "null-valued element",
	4356: "ranges are not supported by this set type",
	4357: "invalid range",
}

func (e ipsetErrno) Error() string {
	if s, ok := ipsetErrText[e]; ok {
		return fmt.Sprintf("ipset: %s (error %d)", s, int(e))
	}
	return fmt.Sprintf("ipset: error %d", int(e))
}

// ipsetError turns the kernel's private ipset error numbers into
// ipsetErrno values (errors.Is(err, errIPSetHashFull) works); other errors are
// returned as they are (errors.Is(err, unix.ENOENT) works on them).
func ipsetError(err error) error {
	var op *netlink.OpError
	if errors.As(err, &op) {
		var no unix.Errno
		if errors.As(op.Err, &no) && no >= 4096 {
			return ipsetErrno(no)
		}
	}
	return err
}

// nlattrs is an append-only netlink attribute encoder: one allocation per
// message, however many elements it holds.
type nlattrs []byte

func (b nlattrs) attr(typ uint16, data []byte) nlattrs {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func (b nlattrs) u8(typ uint16, v uint8) nlattrs { return b.attr(typ, []byte{v}) }

// be32 is a big-endian u32 with the NLA_F_NET_BYTEORDER flag, as ipset wants.
func (b nlattrs) be32(typ uint16, v uint32) nlattrs {
	var d [4]byte
	binary.BigEndian.PutUint32(d[:], v)
	return b.attr(typ|nlaFNetByteOrder, d[:])
}

func (b nlattrs) str(typ uint16, s string) nlattrs { return b.attr(typ, append([]byte(s), 0)) }

// begin opens a nested attribute; end closes it by writing its length.
func (b nlattrs) begin(typ uint16) (nlattrs, int) {
	off := len(b)
	b = binary.NativeEndian.AppendUint16(b, 0)
	b = binary.NativeEndian.AppendUint16(b, typ|nlaFNested)
	return b, off
}

func (b nlattrs) end(off int) nlattrs {
	binary.NativeEndian.PutUint16(b[off:], uint16(len(b)-off))
	return b
}

// ipsetHeader is what the kernel reports about a set (ipset list -t).
type ipsetHeader struct {
	Name, Type string
	Revision   uint8
	Family     uint8 // unix.NFPROTO_IPV4 or unix.NFPROTO_IPV6
	// Timeout is the set's default timeout in seconds; HasTimeout is false
	// for a set created without timeout support.
	Timeout    uint32
	HasTimeout bool
	MaxElem    uint32
	HashSize   uint32
	Elements   uint32
	References uint32
	InitVal    uint32 // random per created set on kernels that report it; 0 otherwise
	CadtFlags  uint32
	Netmask    uint8 // hash:ip with a netmask stores networks; 0 when not set
}

// ipsetEntry is one set element as sent or listed.
type ipsetEntry struct {
	Prefix netip.Prefix
	// Timeout in seconds; 0 sends none (the set's default applies) and, in
	// a listing, means the element has none.
	Timeout uint32
	Comment string
}

// ipsetFamily is the ipset family of an address.
func ipsetFamily(a netip.Addr) uint8 {
	if a.Is4() {
		return unix.NFPROTO_IPV4
	}
	return unix.NFPROTO_IPV6
}

func familyName(f uint8) string {
	switch f {
	case unix.NFPROTO_IPV4:
		return "inet"
	case unix.NFPROTO_IPV6:
		return "inet6"
	}
	return fmt.Sprintf("family %d", f)
}

// ipsetMessage wraps attributes into an ipset request. Every request
// carries the protocol version first.
func ipsetMessage(cmd int, flags netlink.HeaderFlags, attrs nlattrs) netlink.Message {
	data := make([]byte, 0, 12+len(attrs))
	// nfgenmsg: family, version, resource id. ipset ignores the family.
	data = append(data, unix.NFPROTO_IPV4, unix.NFNETLINK_V0, 0, 0)
	data = append(data, nlattrs(nil).u8(ipsetAttrProtocol, ipsetProtocol)...)
	data = append(data, attrs...)
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_IPSET<<8 | cmd), Flags: flags},
		Data:   data,
	}
}

// appendEntry encodes one element as an IPSET_ATTR_DATA container. The
// prefix length is sent only for a network: hash:ip refuses it for IPv6.
func appendEntry(b nlattrs, e ipsetEntry) nlattrs {
	b, data := b.begin(ipsetAttrData)
	b, ip := b.begin(ipsetAttrIP)
	a := e.Prefix.Masked().Addr()
	if a.Is4() {
		v := a.As4()
		b = b.attr(ipsetAttrIPAddrIPv4|nlaFNetByteOrder, v[:])
	} else {
		v := a.As16()
		b = b.attr(ipsetAttrIPAddrIPv6|nlaFNetByteOrder, v[:])
	}
	b = b.end(ip)
	if !isHost(e.Prefix) {
		b = b.u8(ipsetAttrCIDR, uint8(e.Prefix.Bits()))
	}
	if e.Timeout > 0 {
		b = b.be32(ipsetAttrTimeout, e.Timeout)
	}
	if e.Comment != "" {
		b = b.str(ipsetAttrComment, e.Comment)
	}
	return b.end(data)
}

// maxADTBytes bounds one message's IPSET_ATTR_ADT container: its length is
// a 16-bit field, like nftables' element lists.
const maxADTBytes = 60 << 10

// adtMessages encodes adds or deletes of entries for one set as few
// messages as the 16-bit attribute length allows (about 2,500 IPv4 or 1,700
// IPv6 elements each). what describes each message for errors.
func adtMessages(cmd int, set string, entries []ipsetEntry) (msgs []netlink.Message, what []string) {
	verb := "add to"
	if cmd == ipsetCmdDel {
		verb = "delete from"
	}
	for len(entries) > 0 {
		b := nlattrs(nil).str(ipsetAttrSetName, set)
		b, adt := b.begin(ipsetAttrADT)
		start := len(b)
		n := 0
		for n < len(entries) {
			before := len(b)
			b = appendEntry(b, entries[n])
			if len(b)-start > maxADTBytes && n > 0 {
				b = b[:before]
				break
			}
			n++
		}
		b = b.end(adt)
		// The kernel wants a line number with a multi-element container;
		// it reports the failing element's there (ctguard sends none).
		b = b.attr(ipsetAttrLineNo, binary.NativeEndian.AppendUint32(nil, 0))
		// No NLM_F_EXCL: the kernel's "exist" semantics. An add of an
		// element that is there replaces its timeout (a re-ban refreshes
		// it); a delete of one that is gone (expired) is not an error.
		msgs = append(msgs, ipsetMessage(cmd, netlink.Request|netlink.Acknowledge, b))
		what = append(what, fmt.Sprintf("%s %s: %d elements from %s", verb, set, n, entries[0].Prefix))
		entries = entries[n:]
	}
	return msgs, what
}

// ipsetConn is a netlink socket for ipset requests in one network namespace.
type ipsetConn struct {
	c *netlink.Conn
	// window is how many bytes of requests go out before their acks are
	// read, sized to the send buffer.
	window int
}

// Buffer sizes: a window of batched requests must fit the send buffer in
// one sendmsg; the acks (CAP_ACK: a header each) are small.
const (
	ipsetSendBuffer = 4 << 20
	ipsetRecvBuffer = 4 << 20
)

func dialIPSet(netns int) (*ipsetConn, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("ipset netlink: %w", explain(err))
	}
	// Errors echo only the header, not the 60 KiB request.
	_ = c.SetOption(netlink.CapAcknowledge, true)
	_ = c.SetWriteBuffer(ipsetSendBuffer)
	_ = c.SetReadBuffer(ipsetRecvBuffer)
	// 1 MiB at a time: larger windows were not faster (the kernel's
	// inserts dominate: 100,000 in ~180 ms with windows from 64 KiB to
	// 4 MiB) and each window is one kernel allocation.
	window := 256 << 10
	if wb, err := c.WriteBuffer(); err == nil && wb/2 > window {
		window = min(wb/2, 1<<20)
	}
	return &ipsetConn{c: c, window: window}, nil
}

func (x *ipsetConn) Close() error { return x.c.Close() }

// do runs one request and returns the replies (a dump when flags has
// netlink.Dump).
func (x *ipsetConn) do(cmd int, flags netlink.HeaderFlags, attrs nlattrs) ([]netlink.Message, error) {
	msgs, err := x.c.Execute(ipsetMessage(cmd, netlink.Request|flags, attrs))
	if err != nil {
		return nil, ipsetError(err)
	}
	return msgs, nil
}

// batch sends msgs pipelined, a window at a time, and reads one ack per
// message (the kernel processes them in order and acks each). Every
// message is sent even when an earlier one failed; the errors, named by
// what, are returned joined (the first few, and a count).
func (x *ipsetConn) batch(msgs []netlink.Message, what []string) error {
	var errs []error
	failed := 0
	for len(msgs) > 0 {
		n, size := 0, 0
		for n < len(msgs) && (n == 0 || size+len(msgs[n].Data)+16 <= x.window) && n < 128 {
			size += len(msgs[n].Data) + 16
			n++
		}
		if _, err := x.c.SendMessages(msgs[:n]); err != nil {
			return fmt.Errorf("ipset: send %d requests: %w", n, explain(err))
		}
		// Never wait forever for an ack the kernel did not send.
		if err := x.c.SetReadDeadline(time.Now().Add(ipsetAckTimeout)); err != nil {
			return fmt.Errorf("ipset: %w", err)
		}
		for i := range n {
			replies, err := x.c.Receive()
			if err != nil {
				var op *netlink.OpError
				if !errors.As(err, &op) || !isErrno(op.Err) || errors.Is(err, unix.ENOBUFS) {
					// A socket failure (a timeout, or acks lost to a full
					// receive buffer): the count is off, stop here.
					return fmt.Errorf("ipset: read the ack of %s: %w", what[i], err)
				}
				failed++
				if len(errs) < 3 {
					errs = append(errs, fmt.Errorf("%s: %w", what[i], explain(ipsetError(err))))
				}
				continue
			}
			// An ack is one NLMSG_ERROR with code 0; anything else is not
			// ours to count.
			if len(replies) != 1 || replies[0].Header.Type != netlink.Error {
				return fmt.Errorf("ipset: unexpected reply to %s: %d messages", what[i], len(replies))
			}
		}
		msgs, what = msgs[n:], what[n:]
	}
	if err := x.c.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("ipset: %w", err)
	}
	if failed > len(errs) {
		errs = append(errs, fmt.Errorf("and %d more failed requests", failed-len(errs)))
	}
	return errors.Join(errs...)
}

// ipsetAckTimeout bounds the wait for one window's acks.
const ipsetAckTimeout = 30 * time.Second

// isErrno reports whether err is the kernel's answer to a request (an
// errno), as opposed to a failure of the socket.
func isErrno(err error) bool {
	var no unix.Errno
	return errors.As(err, &no)
}

// protocol asks the kernel which ipset protocol versions it speaks.
func (x *ipsetConn) protocol() (version, minVersion uint8, err error) {
	// No ack requested: the reply is the answer (an ack would be left
	// behind on the socket for the next request).
	msgs, err := x.do(ipsetCmdProtocol, 0, nil)
	if err != nil {
		return 0, 0, err
	}
	for _, m := range msgs {
		walkAttrs(m.Data, func(typ uint16, v []byte) {
			switch {
			case typ == ipsetAttrProtocol && len(v) == 1:
				version = v[0]
			case typ == ipsetAttrProtocolMin && len(v) == 1:
				minVersion = v[0]
			}
		})
	}
	if minVersion == 0 {
		minVersion = version
	}
	return version, minVersion, nil
}

// typeRevision asks for the newest revision of a set type in a family the
// kernel has.
func (x *ipsetConn) typeRevision(typ string, family uint8) (uint8, error) {
	b := nlattrs(nil).str(ipsetAttrTypeName, typ).u8(ipsetAttrFamily, family)
	msgs, err := x.do(ipsetCmdType, 0, b)
	if err != nil {
		return 0, fmt.Errorf("ipset type %s (%s): %w", typ, familyName(family), err)
	}
	rev, found := uint8(0), false
	for _, m := range msgs {
		walkAttrs(m.Data, func(t uint16, v []byte) {
			if t == ipsetAttrRevision && len(v) == 1 {
				rev, found = v[0], true
			}
		})
	}
	if !found {
		return 0, fmt.Errorf("ipset type %s (%s): no revision in the kernel's answer", typ, familyName(family))
	}
	return rev, nil
}

// ipsetCreateSpec is a set to create.
type ipsetCreateSpec struct {
	Name, Type string
	Family     uint8
	Revision   uint8
	Timeout    uint32 // default element timeout, seconds; 0: no timeout support
	MaxElem    uint32
	HashSize   uint32 // 0: the kernel's default
	// BucketSize, when not 0, is sent as the ipset tool does for revisions
	// that have it; the kernel then also reports the set's random hash
	// seed (initval), which identity uses.
	BucketSize uint8
}

// bucketSizeRevision is the first revision of each type with a bucket size
// and initval (kernel 5.10's ipset 7.9).
var bucketSizeRevision = map[string]uint8{"hash:ip": 5, "hash:net": 7}

// create makes a set; an existing set of the name is an error
// (errIPSetExist), never replaced.
func (x *ipsetConn) create(s ipsetCreateSpec) error {
	b := nlattrs(nil).str(ipsetAttrSetName, s.Name).str(ipsetAttrTypeName, s.Type).
		u8(ipsetAttrRevision, s.Revision).u8(ipsetAttrFamily, s.Family)
	b, data := b.begin(ipsetAttrData)
	if s.Timeout > 0 {
		b = b.be32(ipsetAttrTimeout, s.Timeout)
	}
	if s.MaxElem > 0 {
		b = b.be32(ipsetAttrMaxElem, s.MaxElem)
	}
	if s.HashSize > 0 {
		b = b.be32(ipsetAttrHashSize, s.HashSize)
	}
	if r, ok := bucketSizeRevision[s.Type]; ok && s.BucketSize > 0 && s.Revision >= r {
		b = b.u8(ipsetAttrBucketSize, s.BucketSize)
	}
	b = b.end(data)
	if _, err := x.do(ipsetCmdCreate, netlink.Acknowledge|netlink.Excl|netlink.Create, b); err != nil {
		return fmt.Errorf("create ipset %s (%s %s): %w", s.Name, s.Type, familyName(s.Family), explain(err))
	}
	return nil
}

func (x *ipsetConn) destroy(name string) error {
	if _, err := x.do(ipsetCmdDestroy, netlink.Acknowledge, nlattrs(nil).str(ipsetAttrSetName, name)); err != nil {
		return fmt.Errorf("destroy ipset %s: %w", name, explain(err))
	}
	return nil
}

// swap exchanges two sets' contents under their names: rules that match
// on a see the new content at once.
func (x *ipsetConn) swap(a, b string) error {
	if _, err := x.do(ipsetCmdSwap, netlink.Acknowledge, nlattrs(nil).str(ipsetAttrSetName, a).str(ipsetAttrSetName2, b)); err != nil {
		return fmt.Errorf("swap ipsets %s and %s: %w", a, b, explain(err))
	}
	return nil
}

func (x *ipsetConn) rename(from, to string) error {
	if _, err := x.do(ipsetCmdRename, netlink.Acknowledge, nlattrs(nil).str(ipsetAttrSetName, from).str(ipsetAttrSetName2, to)); err != nil {
		return fmt.Errorf("rename ipset %s to %s: %w", from, to, explain(err))
	}
	return nil
}

// header lists a set's header only (no elements, however many). ok is
// false when no set has the name.
func (x *ipsetConn) header(name string) (h ipsetHeader, ok bool, err error) {
	b := nlattrs(nil).str(ipsetAttrSetName, name).be32(ipsetAttrFlags, ipsetFlagListHeader)
	msgs, err := x.do(ipsetCmdList, netlink.Dump, b)
	if errors.Is(err, unix.ENOENT) {
		return ipsetHeader{}, false, nil
	}
	if err != nil {
		return ipsetHeader{}, false, fmt.Errorf("list ipset %s: %w", name, explain(err))
	}
	for _, m := range msgs {
		parseIPSetMessage(m.Data, &h, nil)
	}
	if h.Name == "" {
		return ipsetHeader{}, false, nil
	}
	return h, true, nil
}

// list dumps a set: its header and every element with its remaining
// timeout. ok is false when no set has the name.
func (x *ipsetConn) list(name string) (h ipsetHeader, entries []ipsetEntry, ok bool, err error) {
	msgs, err := x.do(ipsetCmdList, netlink.Dump, nlattrs(nil).str(ipsetAttrSetName, name))
	if errors.Is(err, unix.ENOENT) {
		return ipsetHeader{}, nil, false, nil
	}
	if err != nil {
		return ipsetHeader{}, nil, false, fmt.Errorf("list ipset %s: %w", name, explain(err))
	}
	for _, m := range msgs {
		parseIPSetMessage(m.Data, &h, &entries)
	}
	if h.Name == "" {
		return ipsetHeader{}, nil, false, nil
	}
	return h, entries, true, nil
}

// walkAttrs calls fn for each top-level attribute of an nfnetlink message
// (after the 4-byte nfgenmsg), with the flag bits masked off the type.
func walkAttrs(data []byte, fn func(typ uint16, v []byte)) {
	if len(data) < 4 {
		return
	}
	walkNested(data[4:], fn)
}

// walkNested calls fn for each attribute in b; a malformed length ends the
// walk (the kernel's answer is trusted to be well-formed, but a bad one
// must not panic).
func walkNested(b []byte, fn func(typ uint16, v []byte)) {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) & nlaTypeMask
		if l < 4 || l > len(b) {
			return
		}
		fn(typ, b[4:l])
		l = (l + 3) &^ 3
		if l > len(b) {
			return
		}
		b = b[l:]
	}
}

// parseIPSetMessage reads one LIST reply into h and, when entries is not
// nil, appends its elements.
func parseIPSetMessage(data []byte, h *ipsetHeader, entries *[]ipsetEntry) {
	walkAttrs(data, func(typ uint16, v []byte) {
		switch typ {
		case ipsetAttrSetName:
			h.Name = cstring(v)
		case ipsetAttrTypeName:
			h.Type = cstring(v)
		case ipsetAttrRevision:
			if len(v) == 1 {
				h.Revision = v[0]
			}
		case ipsetAttrFamily:
			if len(v) == 1 {
				h.Family = v[0]
			}
		case ipsetAttrData:
			parseIPSetHeaderData(v, h)
		case ipsetAttrADT:
			if entries == nil {
				return
			}
			walkNested(v, func(t uint16, d []byte) {
				if t != ipsetAttrData {
					return
				}
				if e, ok := parseIPSetEntry(d); ok {
					*entries = append(*entries, e)
				}
			})
		}
	})
}

func parseIPSetHeaderData(v []byte, h *ipsetHeader) {
	walkNested(v, func(t uint16, d []byte) {
		u32 := func() uint32 {
			if len(d) != 4 {
				return 0
			}
			return binary.BigEndian.Uint32(d)
		}
		switch t {
		case ipsetAttrTimeout:
			h.Timeout, h.HasTimeout = u32(), true
		case ipsetAttrMaxElem:
			h.MaxElem = u32()
		case ipsetAttrHashSize:
			h.HashSize = u32()
		case ipsetAttrElements:
			h.Elements = u32()
		case ipsetAttrReferences:
			h.References = u32()
		case ipsetAttrInitVal:
			h.InitVal = u32()
		case ipsetAttrCadtFlags:
			h.CadtFlags = u32()
		case ipsetAttrNetmask:
			if len(d) == 1 {
				h.Netmask = d[0]
			}
		}
	})
}

// parseIPSetEntry reads one element (address, prefix length, remaining
// timeout, comment); ok is false for elements that are not an address or
// prefix (other set types).
func parseIPSetEntry(d []byte) (ipsetEntry, bool) {
	var a netip.Addr
	bits := -1
	var e ipsetEntry
	walkNested(d, func(t uint16, v []byte) {
		switch t {
		case ipsetAttrIP:
			walkNested(v, func(t uint16, ip []byte) {
				if t == ipsetAttrIPAddrIPv4 || t == ipsetAttrIPAddrIPv6 {
					a, _ = netip.AddrFromSlice(ip)
				}
			})
		case ipsetAttrCIDR:
			if len(v) == 1 {
				bits = int(v[0])
			}
		case ipsetAttrTimeout:
			if len(v) == 4 {
				e.Timeout = binary.BigEndian.Uint32(v)
			}
		case ipsetAttrComment:
			e.Comment = cstring(v)
		}
	})
	if !a.IsValid() {
		return ipsetEntry{}, false
	}
	if bits < 0 || bits > a.BitLen() {
		bits = a.BitLen()
	}
	e.Prefix = netip.PrefixFrom(a, bits).Masked()
	return e, true
}

func cstring(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\x00")
	return s
}
