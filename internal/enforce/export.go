package enforce

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// ExportSet adds ctguard's bans to an ipset that the host's firewall
// already uses (config: [enforce] export_set, e.g. "blacklist1"), so that
// rules ctguard does not manage drop them too. ctguard never creates,
// destroys or flushes that set and never touches its rules; it only adds
// and removes the elements of its bans.
//
// What the set can hold decides what is exported (Info, Holds):
//
//   - A set with timeout support gets each ban with its remaining time and
//     drops it by itself. A set without (a plain "hash:ip") keeps what it
//     is given: the caller must Remove each exported ban when it ends
//     (unban, expiry, replacement), and after a crash compare Elements with
//     its records.
//   - hash:net holds addresses and prefixes; hash:ip only addresses (the
//     kernel would expand an IPv4 prefix into every address of it, and
//     refuses IPv6 ones), so prefixes are skipped there and said so.
//   - Only the set's family is exported.
//   - Scoped bans (those that leave the SSH ports open) are never exported:
//     the host's rules for the set would drop the SSH session they spare.
type ExportSet struct {
	netns int
	mu    sync.Mutex
	info  ExportInfo
}

// ExportInfo is what an export set is and can hold.
type ExportInfo struct {
	Name, Type string
	Family     string // "inet" or "inet6"
	// Timeouts: elements get the ban's remaining time and vanish by
	// themselves. Without, the caller removes them when the ban ends.
	Timeouts bool
	// Prefixes: the set holds prefixes (hash:net), not only addresses.
	Prefixes bool
	// Comments: elements are added with the comment "ctguard".
	Comments bool
	// MaxElem and Elements: the set's capacity and fill when it was opened.
	MaxElem, Elements uint32
}

// ExportOptions configures OpenExportSet.
type ExportOptions struct {
	// NetNSFd, when non-zero, is the network namespace of the set (tests).
	NetNSFd int
}

// ErrExportSet marks an export set that cannot be used.
var ErrExportSet = errors.New("unusable export set")

// OpenExportSet reads the set's header and says what it can hold. The set
// must exist (ctguard does not create it) and be a hash:ip (without a
// netmask: adding an address would add its whole network) or a hash:net.
func OpenExportSet(ctx context.Context, name string, opt ExportOptions) (*ExportSet, error) {
	if name == "" || len(name) > 31 {
		return nil, fmt.Errorf("%w: %q: an ipset name has 1 to 31 characters", ErrExportSet, name)
	}
	x, err := dialIPSet(opt.NetNSFd)
	if err != nil {
		return nil, err
	}
	defer x.Close()
	h, ok, err := x.header(name)
	if err != nil {
		return nil, fmt.Errorf("export set: %w", err)
	}
	if !ok {
		return nil, fmt.Errorf("%w: ipset %s does not exist (ctguard adds to it but never creates it)", ErrExportSet, name)
	}
	info, err := exportInfo(h)
	if err != nil {
		return nil, err
	}
	return &ExportSet{netns: opt.NetNSFd, info: info}, ctx.Err()
}

// exportInfo judges a set header.
func exportInfo(h ipsetHeader) (ExportInfo, error) {
	info := ExportInfo{Name: h.Name, Type: h.Type, Family: familyName(h.Family), Timeouts: h.HasTimeout,
		Comments: h.CadtFlags&ipsetFlagWithComment != 0, MaxElem: h.MaxElem, Elements: h.Elements}
	switch h.Type {
	case "hash:ip":
		if h.Netmask != 0 && int(h.Netmask) != ipsetHostBits(h.Family) {
			return ExportInfo{}, fmt.Errorf("%w: ipset %s is hash:ip with netmask %d: each address would ban its whole /%d",
				ErrExportSet, h.Name, h.Netmask, h.Netmask)
		}
	case "hash:net":
		info.Prefixes = true
	default:
		return ExportInfo{}, fmt.Errorf("%w: ipset %s is %s; ctguard exports to hash:ip and hash:net sets only", ErrExportSet, h.Name, h.Type)
	}
	if info.Family != "inet" && info.Family != "inet6" {
		return ExportInfo{}, fmt.Errorf("%w: ipset %s has %s", ErrExportSet, h.Name, info.Family)
	}
	return info, nil
}

func ipsetHostBits(family uint8) int {
	if family == ipsetFamily(netip.IPv4Unspecified()) {
		return 32
	}
	return 128
}

// Info says what the set is and can hold.
func (x *ExportSet) Info() ExportInfo { return x.info }

// Holds reports whether the set can hold a ban of p, and why not.
func (i ExportInfo) Holds(e Element) (bool, string) {
	switch {
	case e.Scoped:
		return false, "the ban leaves the SSH ports open; the host's rules for " + i.Name + " would not"
	case familyName(ipsetFamily(e.Prefix.Addr())) != i.Family:
		return false, fmt.Sprintf("%s is an %s set", i.Name, i.Family)
	case !isHost(e.Prefix) && !i.Prefixes:
		return false, fmt.Sprintf("%s is %s, which holds addresses only", i.Name, i.Type)
	}
	return true, ""
}

// ExportSkip is a ban the set cannot hold.
type ExportSkip struct {
	Prefix netip.Prefix
	Reason string
}

// ExportResult says what Add did.
type ExportResult struct {
	// Added lists what went into the set; TTL is what the kernel keeps it
	// for, 0 when the set has no timeouts (the caller must Remove it).
	Added []Element
	// Skipped lists what the set cannot hold, with the reason.
	Skipped []ExportSkip
	// Clamped counts bans longer than ipset's maximum timeout (24 days
	// 20 h): the set keeps them that long; add them again to renew.
	Clamped int
}

// plan turns bans into the elements the set can take.
func (i ExportInfo) plan(elems []Element) (entries []ipsetEntry, r ExportResult) {
	for _, e := range elems {
		e.Prefix = e.Prefix.Masked()
		if ok, why := i.Holds(e); !ok {
			r.Skipped = append(r.Skipped, ExportSkip{Prefix: e.Prefix, Reason: why})
			continue
		}
		en := ipsetEntry{Prefix: e.Prefix}
		added := Element{Prefix: e.Prefix}
		if i.Timeouts {
			var c bool
			en.Timeout, c = ipsetSeconds(e.TTL)
			if en.Timeout == 0 {
				en.Timeout, _ = ipsetSeconds(DefaultTTL) // never the set's "0: permanent"
			}
			if c {
				r.Clamped++
			}
			added.TTL = time.Duration(en.Timeout) * time.Second
		}
		if i.Comments {
			en.Comment = IPTablesComment
		}
		entries = append(entries, en)
		r.Added = append(r.Added, added)
	}
	return entries, r
}

// Add exports bans: those the set can hold are added (an element already
// there gets the new timeout), the others are listed in Skipped.
func (x *ExportSet) Add(ctx context.Context, elems []Element) (ExportResult, error) {
	entries, r := x.info.plan(elems)
	if len(entries) == 0 {
		return r, nil
	}
	if err := x.run(ctx, ipsetCmdAdd, entries); err != nil {
		return ExportResult{Skipped: r.Skipped}, err
	}
	return r, nil
}

// Remove takes bans out of the set; those that are not there (expired, or
// never exported) are not an error.
func (x *ExportSet) Remove(ctx context.Context, prefixes []netip.Prefix) error {
	var entries []ipsetEntry
	for _, p := range prefixes {
		if ok, _ := x.info.Holds(Element{Prefix: p}); ok {
			entries = append(entries, ipsetEntry{Prefix: p.Masked()})
		}
	}
	if len(entries) == 0 {
		return nil
	}
	return x.run(ctx, ipsetCmdDel, entries)
}

func (x *ExportSet) run(ctx context.Context, cmd int, entries []ipsetEntry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	c, err := dialIPSet(x.netns)
	if err != nil {
		return err
	}
	defer c.Close()
	msgs, what := adtMessages(cmd, x.info.Name, entries)
	if err := c.batch(msgs, what); err != nil {
		return fmt.Errorf("export set %s: %w", x.info.Name, err)
	}
	return nil
}

// ExportedElement is an element of the export set.
type ExportedElement struct {
	Prefix netip.Prefix
	TTL    time.Duration // 0: no timeout
	// Comment is the element's comment ("ctguard" for what ctguard added to
	// a set with comments).
	Comment string
}

// Elements lists the set (every element, whoever added it), for the
// caller to remove what it exported for bans that ended while it was not
// running. Without comments nothing tells ctguard's elements from the
// host's: remove only what a ban record explains.
func (x *ExportSet) Elements(ctx context.Context) ([]ExportedElement, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	c, err := dialIPSet(x.netns)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_, entries, ok, err := c.list(x.info.Name)
	if err != nil {
		return nil, fmt.Errorf("export set: %w", err)
	}
	if !ok {
		return nil, fmt.Errorf("%w: ipset %s no longer exists", ErrExportSet, x.info.Name)
	}
	out := make([]ExportedElement, len(entries))
	for i, e := range entries {
		out[i] = ExportedElement{Prefix: e.Prefix, TTL: time.Duration(e.Timeout) * time.Second, Comment: e.Comment}
	}
	return out, ctx.Err()
}
