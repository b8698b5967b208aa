package sockets

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// sockDestroy is SOCK_DESTROY (linux/sock_diag.h).
const sockDestroy = 21

// tcpCloseWait is TCP_CLOSE_WAIT (include/net/tcp_states.h).
const tcpCloseWait = 8

// closable are the states a ban ends: connections the peer holds open
// (ESTABLISHED, including those still in the accept queue), half-open ones
// (SYN_RECV and the request socks of TCP_DEFER_ACCEPT), and those the peer
// closed while the server still holds them (CLOSE_WAIT).
const closable = 1<<tcpEstablished | 1<<tcpSynRecv | 1<<tcpNewSynRecv | 1<<tcpCloseWait

// Target is a banned prefix whose peers' sockets are to be closed, except
// those on the kept local ports (a scoped ban's SSH ports).
type Target struct {
	Prefix       netip.Prefix
	KeepTCPPorts []uint16
}

// ErrDestroyUnsupported: the kernel cannot close sockets from outside
// (built without CONFIG_INET_DIAG_DESTROY).
var ErrDestroyUnsupported = errors.New("this kernel cannot close sockets through sock_diag (CONFIG_INET_DIAG_DESTROY is not set)")

// Closer closes the TCP sockets of banned peers in the caller's network
// namespace through sock_diag's SOCK_DESTROY, as `ss -K` does: the server
// sees a reset, its worker or accept-queue slot is freed at once. DryRun
// only counts.
type Closer struct {
	DryRun bool
	// Open returns a sock_diag socket; nil: Open, in the caller's network
	// namespace (tests open one inside a test namespace).
	Open func() (int, error)
}

// CloseSockets closes the sockets whose peer lies in a target and whose
// local port is not kept, and returns how many it closed per target. spare,
// if set, leaves the sockets of those peers open whatever the targets say
// (the allowlist). A socket that vanished meanwhile is not an error.
func (c *Closer) CloseSockets(ctx context.Context, targets []Target, spare func(netip.Addr) bool) ([]int, error) {
	closed := make([]int, len(targets))
	if len(targets) == 0 {
		return closed, nil
	}
	open := c.Open
	if open == nil {
		open = Open
	}
	fd, err := open()
	if err != nil {
		return closed, err
	}
	defer unix.Close(fd)
	type victim struct {
		family uint8
		id     [48]byte // inet_diag_sockid as dumped, cookie included
		target int
	}
	var vs []victim
	buf := make([]byte, 64<<10)
	for i, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		err := dump(ctx, fd, buf, fam, uint32(i+1), closable, 0, func(p []byte) {
			id := p[4:52]
			lport := binary.BigEndian.Uint16(id[0:])
			var a netip.Addr
			if p[0] == unix.AF_INET {
				a = netip.AddrFrom4([4]byte(id[20:24]))
			} else {
				a = netip.AddrFrom16([16]byte(id[20:36])).Unmap()
			}
			t := match(targets, a, lport)
			if t < 0 || (spare != nil && spare(a)) {
				return
			}
			vs = append(vs, victim{family: p[0], id: [48]byte(id), target: t})
		})
		if err != nil {
			return closed, fmt.Errorf("list sockets to close: %w", err)
		}
	}
	if c.DryRun {
		for _, v := range vs {
			closed[v.target]++
		}
		return closed, nil
	}
	// One SOCK_DESTROY each, batched per sendmsg, every one acknowledged.
	const batch = 64
	msg := make([]byte, 0, batch*(16+56))
	var failed error
	for start := 0; start < len(vs); start += batch {
		if err := ctx.Err(); err != nil {
			return closed, err
		}
		end := min(start+batch, len(vs))
		msg = msg[:0]
		for k := start; k < end; k++ {
			msg = appendDestroy(msg, vs[k].family, &vs[k].id, uint32(k+1))
		}
		if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return closed, fmt.Errorf("sock_diag destroy: %w", err)
		}
		for acked := 0; acked < end-start; {
			n, err := recvTimeout(fd, buf)
			if err != nil {
				return closed, fmt.Errorf("sock_diag destroy: %w", err)
			}
			b := buf[:n]
			for len(b) >= 16 {
				l := int(binary.NativeEndian.Uint32(b))
				if l < 16 || l > len(b) {
					return closed, errors.New("sock_diag destroy: bad message length")
				}
				typ := binary.NativeEndian.Uint16(b[4:])
				seq := binary.NativeEndian.Uint32(b[8:])
				p := b[16:l]
				b = b[min((l+3)&^3, len(b)):]
				if typ != unix.NLMSG_ERROR || len(p) < 4 || seq < 1 || int(seq) > len(vs) {
					continue
				}
				acked++
				switch errno := syscall.Errno(-int32(binary.NativeEndian.Uint32(p))); errno {
				case 0:
					closed[vs[seq-1].target]++
				case unix.ENOENT:
					// closed meanwhile: nothing to do
				case unix.EOPNOTSUPP:
					return closed, ErrDestroyUnsupported
				default:
					failed = errors.Join(failed, fmt.Errorf("close socket of %s: %w", peerOf(vs[seq-1].family, &vs[seq-1].id), errno))
				}
			}
		}
	}
	return closed, failed
}

// match returns the index of the first target holding a whose kept ports
// do not include lport, or -1.
func match(ts []Target, a netip.Addr, lport uint16) int {
	for i := range ts {
		if ts[i].Prefix.Contains(a) && !slices.Contains(ts[i].KeepTCPPorts, lport) {
			return i
		}
	}
	return -1
}

// appendDestroy appends one SOCK_DESTROY request for the socket id.
func appendDestroy(b []byte, family uint8, id *[48]byte, seq uint32) []byte {
	var req [16 + 56]byte
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], sockDestroy)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	ne.PutUint32(req[8:], seq)
	req[16] = family
	req[17] = unix.IPPROTO_TCP
	// idiag_states stays 0: the id is exact (as `ss -K` sends it)
	copy(req[24:], id[:])
	return append(b, req[:]...)
}

func peerOf(family uint8, id *[48]byte) netip.AddrPort {
	port := binary.BigEndian.Uint16(id[2:])
	if family == unix.AF_INET {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(id[20:24])), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16([16]byte(id[20:36])).Unmap(), port)
}

func recvTimeout(fd int, buf []byte) (int, error) {
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		return n, err
	}
}

// DestroySupport reads the kernel's build configuration for
// CONFIG_INET_DIAG_DESTROY: from procRoot/config.gz when the kernel exposes
// it, else from bootDir/config-RELEASE (Debian, Ubuntu, Fedora ship it).
// known is false when neither is readable; then the first ban finds out.
func DestroySupport(procRoot, bootDir, release string) (supported, known bool) {
	var r io.Reader
	if f, err := os.Open(filepath.Join(procRoot, "config.gz")); err == nil {
		defer f.Close()
		if zr, err := gzip.NewReader(f); err == nil {
			r = zr
		}
	}
	if r == nil {
		f, err := os.Open(filepath.Join(bootDir, "config-"+release))
		if err != nil {
			return false, false
		}
		defer f.Close()
		r = f
	}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		switch strings.TrimSpace(sc.Text()) {
		case "CONFIG_INET_DIAG_DESTROY=y":
			return true, true
		case "# CONFIG_INET_DIAG_DESTROY is not set":
			return false, true
		}
	}
	if sc.Err() != nil {
		return false, false
	}
	return false, true // a readable config without the option: not built
}
