package sockets

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Listener is one listening TCP socket and its accept queue: the
// connections the kernel completed that the application has not accepted
// yet, against the most it keeps (the listen backlog, capped by
// net.core.somaxconn). A full queue means the service takes no new client:
// the kernel drops their handshakes until the application accepts.
type Listener struct {
	Local   netip.AddrPort `json:"local"`
	Queue   uint32         `json:"queue"`
	Backlog uint32         `json:"backlog"`
}

// Full reports whether the accept queue is at its limit. The kernel
// refuses a handshake once the queue holds more than the backlog; at the
// backlog the next one is the last it takes.
func (l Listener) Full() bool { return l.Backlog > 0 && l.Queue >= l.Backlog }

// Listeners lists the listening TCP sockets (IPv4 and IPv6) of the
// caller's network namespace with their accept queues; the state is
// filtered in the kernel, so a host with many connections pays for its
// handful of listeners only.
func Listeners(ctx context.Context) ([]Listener, error) {
	fd, err := openDiag()
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var out []Listener
	buf := make([]byte, 16<<10)
	for i, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		err := dump(ctx, fd, buf, fam, uint32(i+1), 1<<tcpListen, 0, func(p []byte) {
			if l, ok := parseListener(p); ok {
				out = append(out, l)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("list listeners: %w", err)
		}
	}
	return out, nil
}

// parseListener decodes an inet_diag_msg of a LISTEN socket: its local
// address from the sockid, and idiag_rqueue/idiag_wqueue, which for a
// listener are the accept queue's length and limit.
func parseListener(p []byte) (Listener, bool) {
	if len(p) < 72 || p[1] != tcpListen {
		return Listener{}, false
	}
	id := p[4:]
	port := binary.BigEndian.Uint16(id[0:])
	var a netip.Addr
	if p[0] == unix.AF_INET {
		a = netip.AddrFrom4([4]byte(id[4:8]))
	} else {
		a = netip.AddrFrom16([16]byte(id[4:20]))
	}
	ne := binary.NativeEndian
	return Listener{Local: netip.AddrPortFrom(a, port), Queue: ne.Uint32(p[56:]), Backlog: ne.Uint32(p[60:])}, true
}
