package host

import (
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// TCP states as /proc/net/tcp prints them (include/net/tcp_states.h).
const (
	TCPEstablished uint8 = 0x01
	TCPListen      uint8 = 0x0A
)

// Socket is one line of /proc/net/tcp or /proc/net/tcp6.
type Socket struct {
	Local, Remote netip.AddrPort // IPv4 peers of dual-stack sockets stay IPv4-mapped
	State         uint8
}

// TCPSockets calls fn with each socket of net/tcp, then of net/tcp6. It
// streams: on a host under attack the files hold hundreds of thousands of
// lines. Lines it cannot parse are skipped. The errors of both files are
// joined; a missing file is the *fs.PathError of os.Open.
func (fs FS) TCPSockets(fn func(Socket)) error {
	var errs []error
	for _, name := range []string{"tcp", "tcp6"} {
		path := fs.Net(name)
		errs = append(errs, withFile(path, func(r io.Reader) error { return parseNetTCP(r, path, nativeOrder, fn) }))
	}
	return errors.Join(errs...)
}

// parseNetTCP parses the text of /proc/net/tcp or tcp6 (read from path)
// written by a machine of the given byte order.
func parseNetTCP(r io.Reader, path string, order binary.ByteOrder, fn func(Socket)) error {
	return scanLines(r, path, func(f []string) {
		if s, ok := parseSocket(f, order); ok {
			fn(s)
		}
	})
}

// parseSocket parses the fields of one line:
// "sl local_address rem_address st ...", addresses as ADDR:PORT in hex.
// The header line ("sl local_address ...") is not a socket.
func parseSocket(f []string, order binary.ByteOrder) (Socket, bool) {
	if len(f) < 4 || len(f[3]) != 2 {
		return Socket{}, false
	}
	st, err := strconv.ParseUint(f[3], 16, 8)
	if err != nil {
		return Socket{}, false
	}
	local, ok1 := parseAddrPort(f[1], order)
	remote, ok2 := parseAddrPort(f[2], order)
	if !ok1 || !ok2 || local.Addr().BitLen() != remote.Addr().BitLen() {
		return Socket{}, false
	}
	return Socket{Local: local, Remote: remote, State: uint8(st)}, true
}

// parseAddrPort parses "0100007F:0016" or the 32-hex-digit IPv6 form.
func parseAddrPort(s string, order binary.ByteOrder) (netip.AddrPort, bool) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, false
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	a, ok := decodeWords(h, order)
	if !ok {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a, uint16(port)), true
}

// nativeOrder is the byte order of this machine, which is the one the
// kernel it runs on writes in.
var nativeOrder binary.ByteOrder = binary.NativeEndian

// decodeWords decodes an address of /proc/net/{tcp,tcp6,route}: 8 or 32
// hex digits. The kernel prints each 32-bit word of the address (network
// order in memory) as an integer in the host's byte order (%08X of a
// __be32 or of s6_addr32[i]): "0100007F" is 127.0.0.1 on a little-endian
// machine, "7F000001" on a big-endian one. Writing the integer back in
// that byte order restores the address bytes. order is the byte order of
// the machine that wrote the text.
func decodeWords(h string, order binary.ByteOrder) (netip.Addr, bool) {
	if len(h) != 8 && len(h) != 32 {
		return netip.Addr{}, false
	}
	var b [16]byte
	for i := 0; i < len(h)/8; i++ {
		w, err := strconv.ParseUint(h[8*i:8*i+8], 16, 32)
		if err != nil {
			return netip.Addr{}, false
		}
		order.PutUint32(b[4*i:], uint32(w))
	}
	if len(h) == 8 {
		return netip.AddrFrom4([4]byte(b[:4])), true
	}
	return netip.AddrFrom16(b), true
}
