package host

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// DefaultGateways returns the next hops of the default routes in net/route
// and net/ipv6_route (the main table only: that is what procfs shows),
// sorted and without repeats. The errors of both files are joined; a
// missing file is the *fs.PathError of os.Open.
func (fs FS) DefaultGateways() ([]netip.Addr, error) {
	var out []netip.Addr
	add := func(a netip.Addr) { out = append(out, a) }
	v4, v6 := fs.Net("route"), fs.Net("ipv6_route")
	err4 := withFile(v4, func(r io.Reader) error { return parseRoute(r, v4, nativeOrder, add) })
	err6 := withFile(v6, func(r io.Reader) error { return parseIPv6Route(r, v6, add) })
	return dedup(out), errors.Join(err4, err6)
}

// rtfGateway is RTF_GATEWAY: the route has a next hop.
const rtfGateway = 0x2

// parseRoute calls fn with the gateway of each default route in net/route
// text written by a machine of the given byte order:
// "Iface Destination Gateway Flags RefCnt Use Metric Mask ...", addresses
// as host-order words (decodeWords), flags in hex.
func parseRoute(r io.Reader, path string, order binary.ByteOrder, fn func(netip.Addr)) error {
	return scanLines(r, path, func(f []string) {
		if len(f) < 8 || f[1] != "00000000" || f[7] != "00000000" {
			return
		}
		flags, err := strconv.ParseUint(f[3], 16, 32)
		if err != nil || flags&rtfGateway == 0 {
			return
		}
		if a, ok := decodeWords(f[2], order); ok && a.Is4() && !a.IsUnspecified() {
			fn(a)
		}
	})
}

// zeroV6 is the unspecified address as net/ipv6_route prints it.
var zeroV6 = strings.Repeat("0", 32)

// parseIPv6Route calls fn with the next hop of each default route in
// net/ipv6_route text: "dst dstlen src srclen nexthop metric refcnt use
// flags iface", addresses as 32 hex digits in network order (byte by byte,
// not in words: the same on every machine).
func parseIPv6Route(r io.Reader, path string, fn func(netip.Addr)) error {
	return scanLines(r, path, func(f []string) {
		if len(f) < 10 || f[0] != zeroV6 || f[1] != "00" || len(f[4]) != 32 {
			return
		}
		b, err := hex.DecodeString(f[4])
		if err != nil {
			return
		}
		if a := netip.AddrFrom16([16]byte(b)); !a.IsUnspecified() {
			fn(a)
		}
	})
}

func dedup(as []netip.Addr) []netip.Addr {
	slices.SortFunc(as, netip.Addr.Compare)
	return slices.Compact(as)
}
