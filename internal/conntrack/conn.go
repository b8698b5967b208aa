package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Errors callers branch on.
var (
	// ErrPermission: the caller lacks CAP_NET_ADMIN in its network namespace.
	ErrPermission = errors.New("reading the conntrack table needs root (CAP_NET_ADMIN): run with sudo")
	// ErrNotLoaded: the kernel has no connection tracking (or no ctnetlink).
	ErrNotLoaded = errors.New("conntrack is not available: the nf_conntrack / nf_conntrack_netlink modules are not loaded")
)

// readBufSize holds the largest datagram a dump sends: the kernel sizes dump
// skbs to the reader's buffer, capped near 32 KiB.
const readBufSize = 64 << 10

// Conn is a ctnetlink socket in the network namespace of the thread that
// opened it. Its methods are safe for concurrent use; requests are serialised.
type Conn struct {
	mu    sync.Mutex
	fd    int
	seq   uint32
	rbuf  []byte
	w     builder
	entry Entry
	dirty bool // a dump was abandoned: reopen before the next request

	flush flushSupport // filtered-flush support, detected at first use
}

type flushSupport int

const (
	flushUnknown flushSupport = iota
	flushYes
	flushNo
)

// Open opens a ctnetlink socket in the caller's current network namespace.
func Open() (*Conn, error) {
	c := &Conn{rbuf: make([]byte, readBufSize)}
	if err := c.open(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Conn) open() error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		if errors.Is(err, unix.EPROTONOSUPPORT) {
			return ErrNotLoaded
		}
		return fmt.Errorf("open ctnetlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("bind ctnetlink socket: %w", err)
	}
	// Room for the acks and errors of a batch; FORCE needs CAP_NET_ADMIN.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, netlinkCapAk, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, netlinkExtAk, 1)
	tv := unix.NsecToTimeval(int64(30 * time.Second))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	c.fd = fd
	c.dirty = false
	return nil
}

// Close closes the socket.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

func (c *Conn) prepare() error {
	if c.fd < 0 {
		return errors.New("conntrack: use of closed Conn")
	}
	if c.dirty {
		unix.Close(c.fd)
		return c.open()
	}
	return nil
}

func (c *Conn) nextSeq() uint32 {
	c.seq++
	if c.seq == 0 {
		c.seq = 1
	}
	return c.seq
}

func (c *Conn) send(b []byte) error {
	for {
		err := unix.Sendto(c.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("send ctnetlink request: %w", err)
		}
		return nil
	}
}

// read receives one datagram into c.rbuf.
func (c *Conn) read(flags int) (int, error) { return recv(c.fd, c.rbuf, flags) }

// recv calls recvfrom directly: the unix package's wrapper allocates a
// Sockaddr per call.
func recv(fd int, buf []byte, flags int) (int, error) {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])),
			uintptr(len(buf)), uintptr(flags), 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
}

// mapErrno turns a kernel error into one a user can act on.
func mapErrno(op string, errno syscall.Errno, ext string) error {
	var err error = errno
	switch errno {
	case unix.EPERM, unix.EACCES:
		err = ErrPermission
	case unix.EOPNOTSUPP, unix.EPROTONOSUPPORT, unix.ENOPROTOOPT:
		err = fmt.Errorf("%w (%v)", ErrNotLoaded, errno)
	}
	if ext != "" {
		return fmt.Errorf("%s: %w (kernel: %s)", op, err, ext)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// parseNlErr decodes an NLMSG_ERROR payload: the errno (0 = ack) and the
// extended ack message, if any.
func parseNlErr(flags uint16, p []byte) (syscall.Errno, string) {
	if len(p) < 4 {
		return unix.EIO, ""
	}
	code := int32(ne.Uint32(p))
	errno := syscall.Errno(-code)
	if code == 0 || flags&nlmFAckTLVs == 0 {
		return errno, ""
	}
	off := 4 + nlmsgHdrLen
	if flags&nlmFCapped == 0 && len(p) >= 4+nlmsgHdrLen {
		off = 4 + int(ne.Uint32(p[4:]))
	}
	if off > len(p) {
		return errno, ""
	}
	a := attrs{b: p[off:]}
	for a.next() {
		if a.typ == nlmsgerrMsg {
			v := a.val
			for len(v) > 0 && v[len(v)-1] == 0 {
				v = v[:len(v)-1]
			}
			return errno, string(v)
		}
	}
	return errno, ""
}

// dump sends the request in c.w and streams every reply message with the
// given seq to fn(type, payload) until NLMSG_DONE. Callers hold c.mu.
func (c *Conn) dump(ctx context.Context, op string, seq uint32, fn func(typ uint16, payload []byte) error) error {
	if err := c.send(c.w.b); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	var cbErr error
	for {
		if err := ctx.Err(); err != nil {
			c.dirty = true
			return err
		}
		n, err := c.read(0)
		if err != nil {
			c.dirty = true
			if err == unix.EAGAIN {
				return fmt.Errorf("%s: no answer from the kernel within 30s", op)
			}
			if err == unix.ENOBUFS {
				return fmt.Errorf("%s: receive buffer overrun: %w", op, err)
			}
			return fmt.Errorf("%s: receive: %w", op, err)
		}
		b := c.rbuf[:n]
		for len(b) >= nlmsgHdrLen {
			l := int(ne.Uint32(b))
			if l < nlmsgHdrLen || l > len(b) {
				c.dirty = true
				return fmt.Errorf("%s: %w: bad message length %d", op, ErrMalformed, l)
			}
			typ := ne.Uint16(b[4:])
			flags := ne.Uint16(b[6:])
			mseq := ne.Uint32(b[8:])
			p := b[nlmsgHdrLen:l]
			al := (l + 3) &^ 3
			if al > len(b) {
				al = len(b)
			}
			b = b[al:]
			if mseq != seq {
				continue // stale answer to an abandoned request
			}
			switch typ {
			case nlmsgDone:
				return cbErr
			case nlmsgError:
				errno, ext := parseNlErr(flags, p)
				if errno == 0 { // the ack that ends a non-dump request
					return cbErr
				}
				return mapErrno(op, errno, ext)
			}
			if cbErr == nil {
				cbErr = fn(typ, p)
			}
		}
	}
}

// DumpOptions selects entries. Kernel-side filters cut the work the kernel
// does; every filter is also re-checked here, so a kernel that ignores one
// still yields correct results.
type DumpOptions struct {
	// Family restricts the dump to FamilyIPv4 or FamilyIPv6; 0 dumps both.
	Family uint8
	// Mark/MarkMask: only entries with mark&MarkMask == Mark (when MarkMask != 0).
	Mark, MarkMask uint32
	// Status/StatusMask: only entries with status&StatusMask == Status
	// (when StatusMask != 0; kernel-side on Linux 5.15+).
	Status, StatusMask Status
	// Source: only entries whose original source is this address. IPv4
	// sources are filtered in the kernel (CTA_FILTER); IPv6 sources are
	// matched here only, because the kernel's IPv6 CTA_FILTER is inverted.
	Source netip.Addr
}

func (o *DumpOptions) match(e *Entry) bool {
	if o.Family != 0 && e.Family != o.Family {
		return false
	}
	if o.MarkMask != 0 && e.Mark&o.MarkMask != o.Mark {
		return false
	}
	if o.StatusMask != 0 && e.Status&o.StatusMask != o.Status {
		return false
	}
	if o.Source.IsValid() && e.Orig.Src != o.Source {
		return false
	}
	return true
}

func (c *Conn) buildDump(seq uint32, o *DumpOptions) {
	family := o.Family
	src := o.Source.Unmap()
	v4src := src.IsValid() && src.Is4()
	if v4src {
		family = FamilyIPv4 // CTA_FILTER needs a concrete family
	}
	if src.IsValid() && src.Is6() {
		family = FamilyIPv6
	}
	c.w.reset()
	c.w.begin(ctMsgGet, nlmFRequest|nlmFDump, seq, family, 0)
	if o.MarkMask != 0 {
		c.w.u32be(ctaMark, o.Mark)
		c.w.u32be(ctaMarkMask, o.MarkMask)
	}
	if o.StatusMask != 0 {
		c.w.u32be(ctaStatus, uint32(o.Status))
		c.w.u32be(ctaStatusMask, uint32(o.StatusMask))
	}
	if v4src {
		c.w.sourceFilter(src)
	}
	c.w.end()
}

// Dump streams every matching entry of the table to fn. The *Entry passed
// to fn is reused: copy what you keep. If fn returns an error the dump stops
// and that error is returned.
func (c *Conn) Dump(ctx context.Context, o DumpOptions, fn func(*Entry) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.prepare(); err != nil {
		return err
	}
	o.Source = o.Source.Unmap()
	seq := c.nextSeq()
	c.buildDump(seq, &o)
	e := &c.entry
	return c.dump(ctx, "dump conntrack table", seq, func(typ uint16, p []byte) error {
		if typ&0xff != ctMsgNew {
			return nil
		}
		if err := ParseMessage(p, e); err != nil {
			return err
		}
		if !o.match(e) {
			return nil
		}
		return fn(e)
	})
}

// Stats are the table's size and the kernel's conntrack counters, summed
// over CPUs (what /proc/net/stat/nf_conntrack shows, without needing it).
type Stats struct {
	Count         uint32 `json:"count"`
	Max           uint32 `json:"max"`
	CPUs          int    `json:"cpus"`
	Found         uint64 `json:"found"`
	Invalid       uint64 `json:"invalid"`
	Insert        uint64 `json:"insert"`
	InsertFailed  uint64 `json:"insert_failed"`
	Drop          uint64 `json:"drop"`
	EarlyDrop     uint64 `json:"early_drop"`
	Error         uint64 `json:"error"`
	SearchRestart uint64 `json:"search_restart"`
	ClashResolve  uint64 `json:"clash_resolve"`
	ChainTooLong  uint64 `json:"chain_toolong"`
}

// Stats reads the entry count, the limit and the per-CPU counters.
func (c *Conn) Stats(ctx context.Context) (Stats, error) {
	return c.stats(ctx, true)
}

// Count reads only the entry count and the limit: one small request, cheap
// enough to poll every second.
func (c *Conn) Count(ctx context.Context) (Stats, error) {
	return c.stats(ctx, false)
}

func (c *Conn) stats(ctx context.Context, perCPU bool) (Stats, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var s Stats
	if err := c.prepare(); err != nil {
		return s, err
	}
	seq := c.nextSeq()
	c.w.reset()
	c.w.begin(ctMsgStats, nlmFRequest|nlmFAck, seq, 0, 0)
	c.w.end()
	err := c.dump(ctx, "read conntrack stats", seq, func(typ uint16, p []byte) error {
		if typ != msgType(ctMsgStats) || len(p) < nfgenHdrLen {
			return nil
		}
		a := attrs{b: p[nfgenHdrLen:]}
		for a.next() {
			if len(a.val) < 4 {
				continue
			}
			switch a.typ {
			case ctaStatsGlobalEntries:
				s.Count = be.Uint32(a.val)
			case ctaStatsGlobalMax:
				s.Max = be.Uint32(a.val)
			}
		}
		return nil
	})
	if err != nil || !perCPU {
		return s, err
	}
	seq = c.nextSeq()
	c.w.reset()
	c.w.begin(ctMsgStatsCPU, nlmFRequest|nlmFDump, seq, 0, 0)
	c.w.end()
	err = c.dump(ctx, "read conntrack per-CPU stats", seq, func(typ uint16, p []byte) error {
		if typ != msgType(ctMsgStatsCPU) || len(p) < nfgenHdrLen {
			return nil
		}
		s.CPUs++
		a := attrs{b: p[nfgenHdrLen:]}
		for a.next() {
			if len(a.val) < 4 {
				continue
			}
			v := uint64(be.Uint32(a.val))
			switch a.typ {
			case ctaStatsFound:
				s.Found += v
			case ctaStatsInvalid:
				s.Invalid += v
			case ctaStatsInsert:
				s.Insert += v
			case ctaStatsInsertFailed:
				s.InsertFailed += v
			case ctaStatsDrop:
				s.Drop += v
			case ctaStatsEarlyDrop:
				s.EarlyDrop += v
			case ctaStatsError:
				s.Error += v
			case ctaStatsSearchRestart:
				s.SearchRestart += v
			case ctaStatsClashResolve:
				s.ClashResolve += v
			case ctaStatsChainTooLong:
				s.ChainTooLong += v
			}
		}
		return nil
	})
	return s, err
}

// Available reports whether this kernel has connection tracking, by the
// sysctl that exists whenever nf_conntrack is loaded.
func Available(procfs string) bool {
	_, err := os.Stat(procfs + "/sys/net/netfilter/nf_conntrack_max")
	return err == nil
}
