package conntrack

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
)

// Reader is what a scan needs: a streaming dump of the table.
type Reader interface {
	Dump(ctx context.Context, o DumpOptions, fn func(*Entry) error) error
	Name() string
}

// Name identifies the netlink reader in scan reports.
func (c *Conn) Name() string { return "netlink" }

// ErrNoProcFile: the kernel has no /proc/net/nf_conntrack.
var ErrNoProcFile = errors.New("no nf_conntrack file in /proc: this kernel was built without CONFIG_NF_CONNTRACK_PROCFS (use the netlink reader)")

// ProcReader reads /proc/net/nf_conntrack, the fallback when ctnetlink is
// unavailable. It parses key=value fields, never column positions: UDP and
// ICMP lines have no state column.
type ProcReader struct {
	Path string
	buf  *bufio.Reader
	e    Entry
}

// ProcPath returns the nf_conntrack file under a procfs root. Under the real
// /proc it prefers /proc/thread-self/net: /proc/net follows the process's
// main thread, not a thread that switched network namespace.
func ProcPath(procfs string) string {
	if filepath.Clean(procfs) == "/proc" {
		p := "/proc/thread-self/net/nf_conntrack"
		if _, err := os.Stat("/proc/thread-self"); err == nil {
			return p
		}
	}
	return filepath.Join(procfs, "net", "nf_conntrack")
}

// Name identifies the /proc reader in scan reports.
func (r *ProcReader) Name() string { return "proc" }

// Dump streams every matching line of the file to fn. The *Entry is reused.
func (r *ProcReader) Dump(ctx context.Context, o DumpOptions, fn func(*Entry) error) error {
	f, err := os.Open(r.Path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: %w", r.Path, ErrNoProcFile)
		}
		if errors.Is(err, fs.ErrPermission) {
			return fmt.Errorf("%s: %w", r.Path, ErrPermission)
		}
		return fmt.Errorf("read conntrack table: %w", err)
	}
	defer f.Close()
	o.Source = o.Source.Unmap()
	return r.scan(ctx, f, &o, fn)
}

func (r *ProcReader) scan(ctx context.Context, rd io.Reader, o *DumpOptions, fn func(*Entry) error) error {
	if r.buf == nil {
		r.buf = bufio.NewReaderSize(rd, 256<<10)
	} else {
		r.buf.Reset(rd)
	}
	for lineNo := 1; ; lineNo++ {
		line, err := r.buf.ReadSlice('\n')
		if len(line) > 0 {
			if lineNo%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if perr := ParseProcLine(line, &r.e); perr != nil {
				return fmt.Errorf("%s line %d: %w", r.Path, lineNo, perr)
			}
			if o.match(&r.e) {
				if ferr := fn(&r.e); ferr != nil {
					return ferr
				}
			}
		}
		if err == io.EOF {
			return nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			return fmt.Errorf("%s line %d: line longer than %d bytes", r.Path, lineNo, r.buf.Size())
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", r.Path, err)
		}
	}
}

// ProcError is a /proc line that could not be parsed.
type ProcError struct {
	Field string
	Msg   string
}

func (e *ProcError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return fmt.Sprintf("field %q: %s", e.Field, e.Msg)
}

// ParseProcLine parses one line of /proc/net/nf_conntrack into e (reset
// first). The first src=/dst=/ports belong to the original direction, the
// ones after the second src= to the reply. It does not allocate for IPv4
// lines or IPv6 addresses written as the kernel writes them.
func ParseProcLine(line []byte, e *Entry) error {
	*e = Entry{Status: StatusConfirmed | StatusSeenReply}
	line = bytes.TrimRight(line, "\r\n")
	pos := 0
	dir := -1 // -1 before the first src=, 0 original, 1 reply
	for i := 0; ; i++ {
		tok, ok := nextField(line, &pos)
		if !ok {
			if i < 5 {
				return &ProcError{Msg: "too few fields"}
			}
			break
		}
		switch i {
		case 0:
			switch string(tok) {
			case "ipv4":
				e.Family = FamilyIPv4
			case "ipv6":
				e.Family = FamilyIPv6
			default:
				return &ProcError{Field: string(tok), Msg: "unknown layer-3 protocol"}
			}
			continue
		case 1:
			continue // layer-3 number, implied by the name
		case 2:
			continue // layer-4 name; the number follows
		case 3:
			n, ok := atou(tok)
			if !ok || n > 255 {
				return &ProcError{Field: string(tok), Msg: "bad layer-4 protocol number"}
			}
			e.Proto = uint8(n)
			continue
		}
		if tok[0] == '[' {
			switch string(tok) {
			case "[UNREPLIED]":
				e.Status &^= StatusSeenReply
			case "[ASSURED]":
				e.Status |= StatusAssured
			case "[OFFLOAD]":
				e.Status |= StatusOffload | StatusAssured
			case "[HW_OFFLOAD]":
				e.Status |= StatusHWOffload | StatusOffload | StatusAssured
			}
			continue
		}
		eq := bytes.IndexByte(tok, '=')
		if eq < 0 {
			if n, ok := atou(tok); ok && i == 4 {
				e.Timeout = uint32(min(n, 1<<32-1))
			} else if e.Proto == ProtoTCP && !e.HasTCPState && dir < 0 {
				st, ok := ParseTCPState(tok)
				if !ok {
					return &ProcError{Field: string(tok), Msg: "unknown TCP state"}
				}
				e.TCPState, e.HasTCPState = st, true
			}
			continue
		}
		key, val := tok[:eq], tok[eq+1:]
		if string(key) == "src" {
			dir++
			if dir > 1 {
				return &ProcError{Field: string(tok), Msg: "more than two tuples"}
			}
		}
		t := &e.Orig
		c := &e.OrigCount
		if dir == 1 {
			t, c = &e.Reply, &e.ReplyCount
		}
		var err error
		switch string(key) {
		case "src", "dst":
			a, ok := parseAddr(val)
			if !ok {
				return &ProcError{Field: string(tok), Msg: "bad address"}
			}
			if key[0] == 's' {
				t.Src = a
			} else {
				t.Dst = a
			}
		case "sport":
			t.SrcPort, err = port(tok, val)
		case "dport":
			t.DstPort, err = port(tok, val)
		case "id":
			t.ICMPID, err = port(tok, val)
		case "type", "code":
			n, ok := atou(val)
			if !ok || n > 255 {
				return &ProcError{Field: string(tok), Msg: "bad ICMP type or code"}
			}
			if key[0] == 't' {
				t.ICMPType = uint8(n)
			} else {
				t.ICMPCode = uint8(n)
			}
		case "packets", "bytes":
			n, ok := atou(val)
			if !ok {
				return &ProcError{Field: string(tok), Msg: "bad counter"}
			}
			if key[0] == 'p' {
				c.Packets = n
			} else {
				c.Bytes = n
			}
			e.HasCounters = true
		case "mark":
			n, ok := atou(val)
			if !ok || n > 1<<32-1 {
				return &ProcError{Field: string(tok), Msg: "bad mark"}
			}
			e.Mark = uint32(n)
		case "zone":
			n, ok := atou(val)
			if !ok || n > 65535 {
				return &ProcError{Field: string(tok), Msg: "bad zone"}
			}
			e.Zone = uint16(n)
		}
		if err != nil {
			return err
		}
	}
	if dir < 0 || !e.Orig.Src.IsValid() || !e.Orig.Dst.IsValid() {
		return &ProcError{Msg: "no original tuple"}
	}
	return nil
}

func port(tok, val []byte) (uint16, error) {
	n, ok := atou(val)
	if !ok || n > 65535 {
		return 0, &ProcError{Field: string(tok), Msg: "bad port or id"}
	}
	return uint16(n), nil
}

// nextField returns the next space-separated field of line from *pos.
func nextField(line []byte, pos *int) ([]byte, bool) {
	i := *pos
	for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
		i++
	}
	if i >= len(line) {
		*pos = i
		return nil, false
	}
	j := i
	for j < len(line) && line[j] != ' ' && line[j] != '\t' {
		j++
	}
	*pos = j
	return line[i:j], true
}

func atou(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (1<<64-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// parseAddr parses an IPv4 or IPv6 address from bytes without allocating
// for the forms the kernel prints; anything else goes through netip.
func parseAddr(b []byte) (netip.Addr, bool) {
	if bytes.IndexByte(b, ':') < 0 {
		var a [4]byte
		oct, n, digits := 0, 0, 0
		for _, c := range b {
			switch {
			case c >= '0' && c <= '9':
				if digits > 0 && n == 0 {
					return netip.Addr{}, false // leading zero
				}
				n = n*10 + int(c-'0')
				digits++
				if n > 255 {
					return netip.Addr{}, false
				}
			case c == '.' && digits > 0 && oct < 3:
				a[oct] = byte(n)
				oct++
				n, digits = 0, 0
			default:
				return netip.Addr{}, false
			}
		}
		if oct != 3 || digits == 0 {
			return netip.Addr{}, false
		}
		a[3] = byte(n)
		return netip.AddrFrom4(a), true
	}
	// Full eight-group form, as /proc prints IPv6.
	if len(b) == 39 {
		var a [16]byte
		for g := 0; g < 8; g++ {
			s := b[g*5 : g*5+4]
			if g < 7 && b[g*5+4] != ':' {
				goto slow
			}
			var v uint16
			for _, c := range s {
				h, ok := unhex(c)
				if !ok {
					goto slow
				}
				v = v<<4 | uint16(h)
			}
			a[2*g], a[2*g+1] = byte(v>>8), byte(v)
		}
		return netip.AddrFrom16(a), true
	}
slow:
	a, err := netip.ParseAddr(string(b))
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
