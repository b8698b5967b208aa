// Package sockets lists the host's TCP sockets over NETLINK_SOCK_DIAG, to
// tell which inbound conntrack entries have an application socket behind
// them. An inbound ESTABLISHED entry with no served socket is an orphan:
// during the incident the host had 20-30 sockets per attacking address
// while conntrack held 150-300 entries for it, while a NAT gateway full of
// real users has a socket behind every entry.
//
// It only reads. It must never be used to judge entries forwarded or
// DNAT'ed to other namespaces: their sockets are not here.
package sockets

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TCP states (include/net/tcp_states.h).
const (
	inetDiagInfo = 2 // INET_DIAG_INFO: struct tcp_info

	// Offset of tcpi_bytes_received in struct tcp_info (Linux 4.1+).
	tcpiBytesReceived = 128

	tcpEstablished = 1
	tcpSynRecv     = 3
	tcpListen      = 10
	tcpNewSynRecv  = 12
)

// served is every socket state that means an application holds (or held)
// the connection: all but LISTEN and the request socks of SYN_RECV, which
// is where TCP_DEFER_ACCEPT parks a client that never sent a byte.
const served = (1<<13 - 1) &^ (1<<tcpSynRecv | 1<<tcpListen | 1<<tcpNewSynRecv | 1)

// Key names a connection from this host's point of view.
type Key struct {
	Remote     [16]byte // IPv4 as IPv4-mapped IPv6
	RemotePort uint16
	LocalPort  uint16
}

// KeyOf builds a key (IPv4 addresses are stored in their mapped form).
func KeyOf(remote netip.Addr, remotePort, localPort uint16) Key {
	return Key{Remote: remote.As16(), RemotePort: remotePort, LocalPort: localPort}
}

// Set is the served TCP sockets of one namespace at one moment. A socket
// counts as served when its peer has sent at least one byte (tcp_info's
// bytes_received), or when the kernel does not say: an accepted connection
// whose client never sent a request is as silent as one that was never
// accepted (a quiet websocket or a pooled client sent its request first).
type Set struct {
	m map[Key]struct{}
	// Silent counts sockets left out because their peer never sent a byte.
	Silent int
}

// Has reports whether a served socket exists for the connection.
func (s *Set) Has(k Key) bool {
	if s == nil {
		return false
	}
	_, ok := s.m[k]
	return ok
}

// Len is the number of served sockets.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.m)
}

// Peers lists the remote ends of the served sockets on the given local
// ports (the SSH sessions, read from the scan's listing).
func (s *Set) Peers(ports []uint16) []netip.AddrPort {
	if s == nil {
		return nil
	}
	var out []netip.AddrPort
	for k := range s.m {
		for _, p := range ports {
			if k.LocalPort == p {
				out = append(out, netip.AddrPortFrom(netip.AddrFrom16(k.Remote).Unmap(), k.RemotePort))
				break
			}
		}
	}
	return out
}

// Add inserts a key (for tests and fakes).
func (s *Set) Add(k Key) {
	if s.m == nil {
		s.m = map[Key]struct{}{}
	}
	s.m[k] = struct{}{}
}

// ErrUnsupported: this kernel has no inet_diag for TCP.
var ErrUnsupported = errors.New("sock_diag for TCP is not available (inet_diag/tcp_diag not loaded)")

// Dumper dumps sockets; it keeps its buffers between dumps.
type Dumper struct {
	buf []byte
	set Set
}

// Dump lists the served TCP sockets (IPv4 and IPv6) of the caller's network
// namespace. The returned Set is reused by the next Dump.
func (d *Dumper) Dump(ctx context.Context) (*Set, error) {
	if d.buf == nil {
		d.buf = make([]byte, 64<<10)
	}
	if d.set.m == nil {
		d.set.m = map[Key]struct{}{}
	}
	clear(d.set.m)
	d.set.Silent = 0
	fd, err := openDiag()
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	for i, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if err := d.dumpFamily(ctx, fd, fam, uint32(i+1)); err != nil {
			return nil, err
		}
	}
	return &d.set, nil
}

func (d *Dumper) dumpFamily(ctx context.Context, fd int, family uint8, seq uint32) error {
	return dump(ctx, fd, d.buf, family, seq, served, 1<<(inetDiagInfo-1), d.add)
}

// dump sends one SOCK_DIAG_BY_FAMILY request for TCP sockets in the given
// states (and extensions) and hands every inet_diag_msg to fn.
func dump(ctx context.Context, fd int, buf []byte, family uint8, seq, states uint32, ext uint8, fn func([]byte)) error {
	// nlmsghdr (16) + inet_diag_req_v2 (56).
	var req [16 + 56]byte
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], 20) // SOCK_DIAG_BY_FAMILY
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], seq)
	req[16] = family
	req[17] = unix.IPPROTO_TCP
	req[18] = ext
	ne.PutUint32(req[20:], states)
	if err := unix.Sendto(fd, req[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sock_diag request: %w", err)
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return fmt.Errorf("sock_diag receive: %w", e)
		}
		b := buf[:n]
		for len(b) >= 16 {
			l := int(ne.Uint32(b))
			if l < 16 || l > len(b) {
				return errors.New("sock_diag: bad message length")
			}
			typ := ne.Uint16(b[4:])
			p := b[16:l]
			b = b[min((l+3)&^3, len(b)):]
			switch typ {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(p) >= 4 {
					if errno := syscall.Errno(-int32(ne.Uint32(p))); errno != 0 {
						if errno == unix.ENOENT || errno == unix.EOPNOTSUPP {
							return ErrUnsupported
						}
						return fmt.Errorf("sock_diag: %w", errno)
					}
				}
				return nil
			}
			if len(p) >= 72 { // sizeof(struct inet_diag_msg)
				fn(p)
			}
		}
	}
}

// add decodes one inet_diag_msg: family, state, timer, retrans, then the
// sockid (sport, dport big endian; then src and dst, 16 bytes each).
func (d *Dumper) add(p []byte) {
	state := p[1]
	if state == tcpListen || state == tcpSynRecv || state == tcpNewSynRecv {
		return
	}
	id := p[4:]
	lport := binary.BigEndian.Uint16(id[0:])
	rport := binary.BigEndian.Uint16(id[2:])
	var remote [16]byte
	if p[0] == unix.AF_INET {
		a := netip.AddrFrom4([4]byte(id[20:24]))
		remote = a.As16()
	} else {
		remote = [16]byte(id[20:36])
	}
	if silent(p[72:]) {
		d.set.Silent++
		return
	}
	d.set.m[Key{Remote: remote, RemotePort: rport, LocalPort: lport}] = struct{}{}
}

// silent reports whether the attributes after an inet_diag_msg carry a
// tcp_info saying the peer never sent a byte. Without one (old kernels,
// short structs) the socket counts as served.
func silent(attrs []byte) bool {
	ne := binary.NativeEndian
	for len(attrs) >= 4 {
		l := int(ne.Uint16(attrs))
		typ := ne.Uint16(attrs[2:]) & 0x3fff
		if l < 4 || l > len(attrs) {
			return false
		}
		if typ == inetDiagInfo {
			v := attrs[4:l]
			if len(v) < tcpiBytesReceived+8 {
				return false
			}
			return ne.Uint64(v[tcpiBytesReceived:]) == 0
		}
		attrs = attrs[min((l+3)&^3, len(attrs)):]
	}
	return false
}

// Open opens a sock_diag socket in the caller's network namespace (for
// Closer.Open).
func Open() (int, error) { return openDiag() }

// openDiag opens a sock_diag socket whose reads give up after 10 s.
func openDiag() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return -1, fmt.Errorf("open sock_diag socket: %w", err)
	}
	tv := unix.NsecToTimeval(10e9)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return fd, nil
}

// Peers lists the remote ends of ESTABLISHED TCP sockets whose local port
// is one of ports (the sessions of sshd, say), with the state filtered in
// the kernel, so half-open connections cost nothing.
func Peers(ctx context.Context, ports []uint16) ([]netip.AddrPort, error) {
	want := map[uint16]bool{}
	for _, p := range ports {
		want[p] = true
	}
	fd, err := openDiag()
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var out []netip.AddrPort
	buf := make([]byte, 64<<10)
	for i, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		err := dump(ctx, fd, buf, fam, uint32(i+1), 1<<tcpEstablished, 0, func(p []byte) {
			id := p[4:]
			lport := binary.BigEndian.Uint16(id[0:])
			if !want[lport] {
				return
			}
			var a netip.Addr
			if p[0] == unix.AF_INET {
				a = netip.AddrFrom4([4]byte(id[20:24]))
			} else {
				a = netip.AddrFrom16([16]byte(id[20:36])).Unmap()
			}
			out = append(out, netip.AddrPortFrom(a, binary.BigEndian.Uint16(id[2:])))
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
