package conntrack

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Event kinds.
type EventKind uint8

// Kinds of conntrack events.
const (
	EventNew EventKind = iota + 1
	EventUpdate
	EventDestroy
)

// Multicast groups (enum nfnetlink_groups).
const (
	groupNew     = 1
	groupUpdate  = 2
	groupDestroy = 3
)

// Listener receives conntrack events. Events are hints, never the truth:
// the kernel drops them when the receive buffer overflows (counted in Lost,
// after which a full scan should resync), and with nf_conntrack_events=2 it
// sends none for entries created before anyone listened.
type Listener struct {
	fd   int
	buf  []byte
	e    Entry
	Lost uint64 // times the kernel reported a receive-buffer overrun
}

// Listen subscribes to the given kinds of events in the caller's network
// namespace, with an 8 MiB receive buffer (a 100k-entry flush loses events
// with the default 208 KiB).
func Listen(kinds ...EventKind) (*Listener, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open conntrack event socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind conntrack event socket: %w", err)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	// Never NETLINK_BROADCAST_ERROR: with a slow reader the kernel would
	// keep flushed entries counted until their events are delivered.
	tv := unix.NsecToTimeval(int64(200 * time.Millisecond))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	for _, k := range kinds {
		g := map[EventKind]int{EventNew: groupNew, EventUpdate: groupUpdate, EventDestroy: groupDestroy}[k]
		if g == 0 {
			unix.Close(fd)
			return nil, fmt.Errorf("unknown event kind %d", k)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, g); err != nil {
			unix.Close(fd)
			if errors.Is(err, unix.EPERM) {
				return nil, ErrPermission
			}
			return nil, fmt.Errorf("subscribe to conntrack events: %w", err)
		}
	}
	return &Listener{fd: fd, buf: make([]byte, readBufSize)}, nil
}

// Close closes the socket.
func (l *Listener) Close() error { return unix.Close(l.fd) }

// Run calls fn for every event until ctx ends or fn returns an error. The
// *Entry is reused. Overruns are counted in Lost and reported to fn as a
// zero kind with a nil entry, so the caller can schedule a resync.
func (l *Listener) Run(ctx context.Context, fn func(EventKind, *Entry) error) error {
	for ctx.Err() == nil {
		n, err := recv(l.fd, l.buf, 0)
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
			continue
		case err == unix.ENOBUFS:
			l.Lost++
			if err := fn(0, nil); err != nil {
				return err
			}
			continue
		case err != nil:
			return fmt.Errorf("conntrack events: %w", err)
		}
		b := l.buf[:n]
		for len(b) >= nlmsgHdrLen {
			ln := int(ne.Uint32(b))
			if ln < nlmsgHdrLen || ln > len(b) {
				break
			}
			typ, flags := ne.Uint16(b[4:]), ne.Uint16(b[6:])
			p := b[nlmsgHdrLen:ln]
			b = b[min((ln+3)&^3, len(b)):]
			var kind EventKind
			switch {
			case typ == msgType(ctMsgNew) && flags&(nlmFCreate|nlmFExcl) != 0:
				kind = EventNew
			case typ == msgType(ctMsgNew):
				kind = EventUpdate
			case typ == msgType(ctMsgDelete):
				kind = EventDestroy
			default:
				continue
			}
			if ParseMessage(p, &l.e) != nil {
				continue
			}
			if err := fn(kind, &l.e); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}
