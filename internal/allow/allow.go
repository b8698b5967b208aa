// Package allow builds the allowlist that enforcement always consults before
// a ban: loopback, the host's own addresses, its default gateways and
// resolvers, and configured or runtime entries. It also lists the peers of
// open SSH sessions, which are not exempt from bans: a ban that covers one
// leaves the SSH ports open (see Session), so that the operator's session
// survives while an attacker gains nothing by opening a connection to :22.
//
// It only reads (procfs, resolv.conf, interface addresses); it never changes
// anything. Every kernel path is relative to a configurable procfs root so
// that tests run against fixture trees.
package allow

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Source says why an entry is on the list.
type Source string

// Sources, in the words the refusal message uses.
const (
	Loopback   Source = "loopback"
	LinkLocal  Source = "link-local" // neighbours on the link, cloud metadata (169.254.169.254), link-local NTP
	Local      Source = "local address"
	Gateway    Source = "default gateway"
	Resolver   Source = "resolver"
	SSH        Source = "open SSH session" // not exempt: bans covering it spare the SSH ports
	Configured Source = "configured"
	Runtime    Source = "runtime allow"
)

// Entry is one allowlisted address or prefix.
type Entry struct {
	Prefix  netip.Prefix
	Source  Source
	Detail  string    // e.g. interface name, file, session, note
	Expires time.Time // zero: no expiry
}

func (e Entry) String() string {
	s := fmt.Sprintf("%s (%s", e.Prefix, e.Source)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s + ")"
}

// Config says where to look. Zero values give the host defaults.
type Config struct {
	ProcRoot   string   // default "/proc"; files read: net/route, net/ipv6_route, net/tcp, net/tcp6
	ResolvConf string   // default "/etc/resolv.conf"
	SSHPorts   []uint16 // local ports of sshd; default [22]
	// InterfaceAddrs lists the host's addresses; default net.InterfaceAddrs
	// in the caller's network namespace.
	InterfaceAddrs func() ([]netip.Prefix, error)
	Static         []Entry // configured and runtime entries
	// SSHPeers lists the remote ends of open sessions on the given local
	// ports; default: parse net/tcp and net/tcp6 under ProcRoot. The daemon
	// uses sock_diag instead: reading /proc/net/tcp walks every socket in
	// text, seconds on a victim holding 200,000 half-open connections.
	SSHPeers func(ports []uint16) ([]netip.AddrPort, error)
}

// List is a loaded allowlist. It is immutable; Load a new one to refresh.
type List struct {
	entries []Entry
	// Warnings lists sources that could not be read (the list is still
	// usable; a missing resolv.conf must not stop enforcement).
	Warnings []string
}

// Entries returns a copy of the entries.
func (l *List) Entries() []Entry { return slices.Clone(l.entries) }

// Load gathers every source. Unreadable sources become Warnings, not errors,
// except that a failing interface listing is an error: without the host's
// own addresses the list would be unsafe.
func Load(cfg Config, now time.Time) (*List, error) {
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = "/etc/resolv.conf"
	}
	if len(cfg.SSHPorts) == 0 {
		cfg.SSHPorts = []uint16{22}
	}
	if cfg.InterfaceAddrs == nil {
		cfg.InterfaceAddrs = hostAddrs
	}
	l := &List{}
	l.add(Entry{Prefix: netip.MustParsePrefix("127.0.0.0/8"), Source: Loopback})
	l.add(Entry{Prefix: netip.MustParsePrefix("::1/128"), Source: Loopback})
	l.add(Entry{Prefix: netip.MustParsePrefix("169.254.0.0/16"), Source: LinkLocal})
	l.add(Entry{Prefix: netip.MustParsePrefix("fe80::/10"), Source: LinkLocal})

	addrs, err := cfg.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("allowlist: interface addresses: %w", err)
	}
	for _, p := range addrs {
		l.add(Entry{Prefix: netip.PrefixFrom(p.Addr(), p.Addr().BitLen()), Source: Local})
	}

	gws, err := DefaultGateways(cfg.ProcRoot)
	l.warn(err)
	for _, a := range gws {
		l.add(Entry{Prefix: host(a), Source: Gateway})
	}
	res, err := Resolvers(cfg.ResolvConf)
	l.warn(err)
	for _, a := range res {
		l.add(Entry{Prefix: host(a), Source: Resolver, Detail: cfg.ResolvConf})
	}
	var peers []netip.AddrPort
	if cfg.SSHPeers != nil {
		peers, err = cfg.SSHPeers(cfg.SSHPorts)
	} else {
		peers, err = SSHPeers(cfg.ProcRoot, cfg.SSHPorts)
	}
	l.warn(err)
	for _, p := range peers {
		l.add(Entry{Prefix: host(p.Addr()), Source: SSH, Detail: "peer " + p.String()})
	}
	for _, e := range cfg.Static {
		if !e.Expires.IsZero() && !e.Expires.After(now) {
			continue
		}
		l.add(e)
	}
	return l, nil
}

func (l *List) warn(err error) {
	if err != nil {
		l.Warnings = append(l.Warnings, err.Error())
	}
}

// add appends e and, for an IPv4 entry, its IPv4-mapped IPv6 form, which is
// how a v4 peer appears on a dual-stack socket.
func (l *List) add(e Entry) {
	e.Prefix = e.Prefix.Masked()
	l.entries = append(l.entries, e)
	if e.Prefix.Addr().Is4() {
		m := e
		m.Prefix = netip.PrefixFrom(netip.AddrFrom16(e.Prefix.Addr().As16()), 96+e.Prefix.Bits())
		l.entries = append(l.entries, m)
	}
}

// Check reports the first entry that a ban of p would hit: p lies inside the
// entry, or p covers (part of) it. IPv4-mapped IPv6 input is checked in both
// forms. Peers of SSH sessions are not exempt (see Session).
func (l *List) Check(p netip.Prefix) (Entry, bool) {
	return l.find(p, func(e *Entry) bool { return e.Source != SSH })
}

// Session reports the first peer of an open SSH session that a ban of p
// would cover. Such a ban must leave the SSH ports open: anyone can open a
// TCP connection to :22 without logging in, so a session proves nothing
// about the peer's other traffic, but the operator's own session must never
// be cut by a ban.
func (l *List) Session(p netip.Prefix) (Entry, bool) {
	return l.find(p, func(e *Entry) bool { return e.Source == SSH })
}

func (l *List) find(p netip.Prefix, want func(*Entry) bool) (Entry, bool) {
	cands := []netip.Prefix{p.Masked()}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		cands = append(cands, netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked())
	}
	for _, c := range cands {
		for i := range l.entries {
			if e := &l.entries[i]; e.Prefix.Overlaps(c) && want(e) {
				return *e, true
			}
		}
	}
	return Entry{}, false
}

// Refusal is the error a refused ban returns.
type Refusal struct {
	Target netip.Prefix
	Entry  Entry
}

func (r *Refusal) Error() string {
	if r.Target.Bits() == r.Target.Addr().BitLen() && r.Entry.Prefix.Contains(r.Target.Addr()) {
		return fmt.Sprintf("%s is allowlisted: %s", r.Target.Addr(), r.Entry)
	}
	return fmt.Sprintf("%s covers allowlisted %s", r.Target, r.Entry)
}

// ErrAllowlisted matches any *Refusal with errors.Is.
var ErrAllowlisted = errors.New("allowlisted")

func (r *Refusal) Is(target error) bool { return target == ErrAllowlisted }

func host(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

func hostAddrs() ([]netip.Prefix, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if addr, ok := netip.AddrFromSlice(n.IP); ok {
				ones, _ := n.Mask.Size()
				out = append(out, netip.PrefixFrom(addr.Unmap(), ones))
			}
		}
	}
	return out, nil
}

// DefaultGateways reads the next hops of the default routes from
// procRoot/net/route and procRoot/net/ipv6_route (main table only; that is
// what procfs shows).
func DefaultGateways(procRoot string) ([]netip.Addr, error) {
	var out []netip.Addr
	var errs []error
	err := eachLine(filepath.Join(procRoot, "net/route"), func(f []string) {
		// Iface Destination Gateway Flags RefCnt Use Metric Mask ...
		if len(f) < 8 || f[1] != "00000000" || f[7] != "00000000" {
			return
		}
		flags, err := strconv.ParseUint(f[3], 16, 32)
		if err != nil || flags&0x2 == 0 { // RTF_GATEWAY
			return
		}
		b, err := hex.DecodeString(f[2])
		if err != nil || len(b) != 4 {
			return
		}
		// procfs prints the __be32 as a host-order integer: bytes reversed on little endian.
		var a [4]byte
		binary.NativeEndian.PutUint32(a[:], binary.BigEndian.Uint32(b))
		if addr := netip.AddrFrom4(a); !addr.IsUnspecified() {
			out = append(out, addr)
		}
	})
	errs = append(errs, err)
	err = eachLine(filepath.Join(procRoot, "net/ipv6_route"), func(f []string) {
		// dst dstlen src srclen nexthop metric refcnt use flags iface
		if len(f) < 10 || f[0] != strings.Repeat("0", 32) || f[1] != "00" {
			return
		}
		b, err := hex.DecodeString(f[4])
		if err != nil || len(b) != 16 {
			return
		}
		if addr := netip.AddrFrom16([16]byte(b)); !addr.IsUnspecified() {
			out = append(out, addr)
		}
	})
	errs = append(errs, err)
	return dedup(out), errors.Join(errs...)
}

// Resolvers returns the nameserver addresses in a resolv.conf file.
func Resolvers(path string) ([]netip.Addr, error) {
	var out []netip.Addr
	err := eachLineC(path, true, func(f []string) {
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil {
				out = append(out, a.WithZone("").Unmap())
			}
		}
	})
	return dedup(out), err
}

// SSHPeers returns the remote ends of ESTABLISHED TCP sockets whose local
// port is one of ports, from procRoot/net/tcp and tcp6.
func SSHPeers(procRoot string, ports []uint16) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	var errs []error
	for _, name := range []string{"net/tcp", "net/tcp6"} {
		err := eachLine(filepath.Join(procRoot, name), func(f []string) {
			// sl local_address rem_address st ...
			if len(f) < 4 || f[3] != "01" { // TCP_ESTABLISHED
				return
			}
			local, ok1 := parseProcAddrPort(f[1])
			remote, ok2 := parseProcAddrPort(f[2])
			if ok1 && ok2 && slices.Contains(ports, local.Port()) {
				out = append(out, netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port()))
			}
		})
		errs = append(errs, err)
	}
	return out, errors.Join(errs...)
}

// parseProcAddrPort parses "0100007F:0016" or the 32-hex-digit IPv6 form;
// the address is printed as host-order 32-bit words.
func parseProcAddrPort(s string) (netip.AddrPort, bool) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, false
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	b, err := hex.DecodeString(h)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return netip.AddrPort{}, false
	}
	for i := 0; i < len(b); i += 4 {
		binary.NativeEndian.PutUint32(b[i:], binary.BigEndian.Uint32(b[i:]))
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(a, uint16(port)), true
}

func eachLine(path string, fn func([]string)) error { return eachLineC(path, false, fn) }

// eachLineC calls fn with the fields of each line, dropping #/; comments
// when comments is set (resolv.conf; procfs has none).
func eachLineC(path string, comments bool, fn func([]string)) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("allowlist source %s missing", path)
		}
		return fmt.Errorf("allowlist source: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); comments && i >= 0 {
			line = line[:i]
		}
		fn(strings.Fields(line))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}

func dedup(as []netip.Addr) []netip.Addr {
	slices.SortFunc(as, netip.Addr.Compare)
	return slices.Compact(as)
}
