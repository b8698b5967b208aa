// Package enforce applies bans: it owns ctguard's nftables table (sets of
// banned addresses and prefixes with kernel-side timeouts, dropped at raw
// prerouting priority, before conntrack), purges a banned source's conntrack
// entries and checks that they are gone, and keeps the kernel in step with
// the store.
//
// It must never touch anything outside its own table ("table inet
// ctguard"), and it must never ban an allowlisted address or a prefix that
// covers one.
//
// The kernel side sits behind the Firewall and Purger interfaces, with a
// real nftables implementation (NFT) and fakes beside it, so that the engine
// logic is tested without root.
package enforce

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/ctguard/ctguard/internal/human"
	"github.com/ctguard/ctguard/internal/sockets"
)

// Firewall is the kernel side of bans.
type Firewall interface {
	// Setup deletes and recreates the own table with elems in it, in one
	// atomic change. It returns an identity of the new table for Check.
	Setup(ctx context.Context, elems []Element) (TableID, error)
	// Check inspects the own table cheaply (structure, not elements) and
	// returns a description of what is wrong, or "" when it is as Setup
	// left it. want is the TableID from Setup, or 0 when unknown.
	Check(ctx context.Context, want TableID) (problem string, err error)
	// Apply deletes c.Delete (elements already gone are not an error) and
	// adds c.Add, atomically when no deleted element had already expired.
	Apply(ctx context.Context, c Change) error
	// Counters reads the drop rules' counters.
	Counters(ctx context.Context) (Counters, error)
	// Elements lists the ban sets' elements, each with the time the kernel
	// still keeps it; nil when the table does not exist.
	Elements(ctx context.Context) ([]Element, error)
}

// TableID identifies one incarnation of the own table (the kernel's table
// handle, which a recreated table never reuses). 0 means unknown.
type TableID uint64

// Element is one set element: an address (full-length prefix) or a prefix,
// with the time the kernel keeps it.
type Element struct {
	Prefix netip.Prefix
	TTL    time.Duration
	// Scoped elements leave the SSH ports open (the target covers the peer
	// of an open SSH session).
	Scoped bool
}

// Change is one batch of set operations. Deletes run before adds, so
// deleting and re-adding a prefix refreshes its timeout. A delete's TTL is
// ignored; its Scoped flag names the set.
type Change struct {
	Delete []Element
	Add    []Element
}

// Counter is packets and bytes dropped by one rule.
type Counter struct {
	Packets, Bytes uint64
}

// SetCounters are the drop counters of one group of four sets.
type SetCounters struct {
	Ban4, Net4, Ban6, Net6 Counter
}

// Counters holds the drop counters per set: full bans, and scoped ones
// (everything but the SSH ports).
type Counters struct {
	SetCounters
	Scoped SetCounters
}

func (c SetCounters) total() Counter {
	return Counter{
		Packets: c.Ban4.Packets + c.Net4.Packets + c.Ban6.Packets + c.Net6.Packets,
		Bytes:   c.Ban4.Bytes + c.Net4.Bytes + c.Ban6.Bytes + c.Net6.Bytes,
	}
}

// Total sums every drop rule.
func (c Counters) Total() Counter {
	a, b := c.SetCounters.total(), c.Scoped.total()
	return Counter{Packets: a.Packets + b.Packets, Bytes: a.Bytes + b.Bytes}
}

// Purger deletes and counts a source's conntrack entries. The real one is
// *conntrack.Conn; a prefix means every member address.
type Purger interface {
	PurgeSource(ctx context.Context, p netip.Prefix) (int, error)
	CountSource(ctx context.Context, p netip.Prefix) (int, error)
}

// BatchPurger is a Purger that handles many sources in one pass over the
// table (*conntrack.Conn does: one dump instead of one per source). BanMany
// uses it when it bans more than one source: a cycle that bans 900
// rotating bots must not walk a 262k-entry table 1,800 times.
type BatchPurger interface {
	Purger
	PurgeSources(ctx context.Context, ps []netip.Prefix) ([]int, error)
	CountSources(ctx context.Context, ps []netip.Prefix) ([]int, error)
}

// KeepingPurger is a BatchPurger that can leave a source's TCP entries to
// some local ports alone: the SSH sessions a scoped ban spares.
type KeepingPurger interface {
	PurgeSourcesKeeping(ctx context.Context, ps []netip.Prefix, keepTCPPorts []uint16) ([]int, error)
	CountSourcesKeeping(ctx context.Context, ps []netip.Prefix, keepTCPPorts []uint16) ([]int, error)
}

// SocketCloser ends the host's TCP connections of banned peers, so that a
// ban frees the service (its workers and accept queue), not only the
// table. *sockets.Closer is the real one.
type SocketCloser interface {
	CloseSockets(ctx context.Context, targets []sockets.Target, spare func(netip.Addr) bool) ([]int, error)
}

// Limits on what a ban may be.
const (
	DefaultTTL = time.Hour
	MaxTTL     = 30 * 24 * time.Hour
	MinTTL     = time.Second
	// Broadest prefixes accepted: anything wider is almost certainly a typo
	// and would cut off a large part of the Internet.
	MinBits4 = 8
	MinBits6 = 16
)

// ErrBadTarget marks unusable ADDR/CIDR input.
var ErrBadTarget = errors.New("bad address or prefix")

// ErrBadTTL marks an unusable duration.
var ErrBadTTL = errors.New("bad ttl")

// ParseTarget turns "ADDR" or "CIDR" into the prefix the kernel will see.
// An IPv4-mapped IPv6 address is unmapped (packets from that peer are IPv4
// on the wire) and note says so. A CIDR with host bits set is refused rather
// than silently widened: "192.0.2.1/24" may be a typo for an address.
func ParseTarget(s string) (p netip.Prefix, note string, err error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Prefix{}, "", fmt.Errorf("%w: empty", ErrBadTarget)
	}
	if strings.Contains(s, "/") {
		p, err = netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, "", fmt.Errorf("%w: %q is not a CIDR prefix", ErrBadTarget, s)
		}
		if p.Masked() != p {
			return netip.Prefix{}, "", fmt.Errorf("%w: %q has host bits set; the network is %s (or ban the address %s alone)",
				ErrBadTarget, s, p.Masked(), p.Addr())
		}
	} else {
		a, perr := netip.ParseAddr(s)
		if perr != nil {
			return netip.Prefix{}, "", fmt.Errorf("%w: %q is not an IP address", ErrBadTarget, s)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, "", fmt.Errorf("%w: %q has a zone; link-local scoped addresses cannot be banned", ErrBadTarget, s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, "", fmt.Errorf("%w: %q is wider than the IPv4-mapped range", ErrBadTarget, s)
		}
		orig := p
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		note = fmt.Sprintf("%s is IPv4-mapped: using %s", orig, p)
	}
	if p.Addr().Is4() && p.Bits() < MinBits4 || p.Addr().Is6() && p.Bits() < MinBits6 {
		return netip.Prefix{}, "", fmt.Errorf("%w: %q is too broad (at least /%d for IPv4, /%d for IPv6)",
			ErrBadTarget, s, MinBits4, MinBits6)
	}
	if why := notRemoteSource(p); why != "" {
		return netip.Prefix{}, "", fmt.Errorf("%w: %q is %s, never the source of a connection to ban", ErrBadTarget, s, why)
	}
	return p, note, nil
}

// notRemoteSource says why no remote peer's connection can come from
// (any part of) p, or "": unspecified, broadcast and multicast addresses.
func notRemoteSource(p netip.Prefix) string {
	a := p.Addr()
	switch {
	case a.IsUnspecified() && p.IsSingleIP():
		return "the unspecified address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	case a.IsMulticast():
		return "a multicast address"
	}
	return ""
}

// ParseTTL parses a ban duration as people type it (90s, 30m, 12h, 7d,
// 1d12h: human.ParseDuration). It must lie within [MinTTL, MaxTTL].
func ParseTTL(s string) (time.Duration, error) {
	d, err := human.ParseDuration(s)
	if errors.Is(err, human.ErrRange) {
		return 0, fmt.Errorf("%w: %q: exceeds the maximum %s", ErrBadTTL, s, human.Duration(MaxTTL))
	}
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrBadTTL, err)
	}
	if err := CheckTTL(d); err != nil {
		return 0, fmt.Errorf("%w: %q: %v", ErrBadTTL, s, err)
	}
	return d, nil
}

// CheckTTL validates a ban duration.
func CheckTTL(d time.Duration) error {
	switch {
	case d <= 0:
		return fmt.Errorf("must be positive")
	case d < MinTTL:
		return fmt.Errorf("shorter than the minimum %s", MinTTL)
	case d > MaxTTL:
		return fmt.Errorf("exceeds the maximum %s", human.Duration(MaxTTL))
	}
	return nil
}

// isHost reports whether p is a single address (it goes to the address
// sets, not the interval sets).
func isHost(p netip.Prefix) bool { return p.Bits() == p.Addr().BitLen() }
