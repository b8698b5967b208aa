// Package allow builds the allowlist that enforcement always consults before
// a ban: loopback, the host's own addresses, its default gateways and
// resolvers, and configured or runtime entries. It also lists the peers of
// open SSH sessions, which are not exempt from bans: a ban that covers one
// leaves the SSH ports open (see Session), so that the operator's session
// survives while an attacker gains nothing by opening a connection to :22.
//
// It only reads (procfs, resolv.conf, interface addresses, all through package
// host); it never changes anything. Every kernel path is relative to a
// configurable procfs root so that tests run against fixture trees.
package allow

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"time"

	"github.com/ctguard/ctguard/internal/host"
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
		// The caller's namespace, whatever ProcRoot says.
		cfg.InterfaceAddrs = host.FS{}.LocalAddrs
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
		l.add(Entry{Prefix: single(a), Source: Gateway})
	}
	res, err := Resolvers(cfg.ResolvConf)
	l.warn(err)
	for _, a := range res {
		l.add(Entry{Prefix: single(a), Source: Resolver, Detail: cfg.ResolvConf})
	}
	var peers []netip.AddrPort
	if cfg.SSHPeers != nil {
		peers, err = cfg.SSHPeers(cfg.SSHPorts)
	} else {
		peers, err = SSHPeers(cfg.ProcRoot, cfg.SSHPorts)
	}
	l.warn(err)
	for _, p := range peers {
		l.add(Entry{Prefix: single(p.Addr()), Source: SSH, Detail: "peer " + p.String()})
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

// single is the prefix holding a alone.
func single(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// DefaultGateways reads the next hops of the default routes from
// procRoot/net/route and procRoot/net/ipv6_route (main table only; that is
// what procfs shows).
func DefaultGateways(procRoot string) ([]netip.Addr, error) {
	gws, err := host.FS{ProcRoot: procRoot}.DefaultGateways()
	return gws, sourceErr(err)
}

// Resolvers returns the nameserver addresses in a resolv.conf file.
func Resolvers(path string) ([]netip.Addr, error) {
	res, err := host.Nameservers(path)
	return res, sourceErr(err)
}

// SSHPeers returns the remote ends of ESTABLISHED TCP sockets whose local
// port is one of ports, from procRoot/net/tcp and tcp6.
func SSHPeers(procRoot string, ports []uint16) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	err := host.FS{ProcRoot: procRoot}.TCPSockets(func(s host.Socket) {
		if s.State == host.TCPEstablished && slices.Contains(ports, s.Local.Port()) {
			out = append(out, netip.AddrPortFrom(s.Remote.Addr().Unmap(), s.Remote.Port()))
		}
	})
	return out, sourceErr(err)
}

// sourceErr words the errors of reading a source (each of a joined error)
// for the list's Warnings.
func sourceErr(err error) error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var errs []error
		for _, e := range j.Unwrap() {
			errs = append(errs, sourceErr(e))
		}
		return errors.Join(errs...)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && errors.Is(pe.Err, fs.ErrNotExist) {
		return fmt.Errorf("allowlist source %s missing", pe.Path)
	}
	return fmt.Errorf("allowlist source: %w", err)
}
