package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/ctguard/ctguard/internal/prefixset"
)

// PurgeSource deletes every entry whose original source lies in p and
// returns how many it deleted.
//
// For a single IPv4 address it sends one filtered flush (CTA_FILTER on the
// original source) when the kernel supports that (Linux 6.x, detected at
// first use; older kernels reject it without flushing anything). The
// kernel does not say how many entries a flush removed, so the count is the
// drop of the table's entry count across the request: exact on a quiet
// table, approximate while other entries come and go. Callers that need the
// truth re-count with CountSource.
//
// Otherwise (prefixes, IPv6, older kernels) it dumps the table, matches in
// user space and deletes entry by entry in batches. Kernel-side address
// filters are never used for IPv6: on current kernels they are inverted and
// would delete every other IPv6 entry.
func (c *Conn) PurgeSource(ctx context.Context, p netip.Prefix) (int, error) {
	if !p.IsValid() {
		return 0, fmt.Errorf("purge: invalid prefix %v", p)
	}
	p = prefixset.Canonical(p)
	if p.Addr().Is4() && p.IsSingleIP() {
		n, err := c.flushSource(ctx, p.Addr())
		if !errors.Is(err, errFlushUnsupported) {
			return n, err
		}
	}
	n, err := c.dumpAndDelete(ctx, []netip.Prefix{p}, nil)
	return n[0], err
}

var errFlushUnsupported = errors.New("filtered flush not supported by this kernel")

// FilteredFlushSupported reports what the first filtered flush found out:
// true/false, or unknown before any single-IPv4 purge ran.
func (c *Conn) FilteredFlushSupported() (supported, known bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flush == flushYes, c.flush != flushUnknown
}

func (c *Conn) flushSource(ctx context.Context, src netip.Addr) (int, error) {
	c.mu.Lock()
	if c.flush == flushNo {
		c.mu.Unlock()
		return 0, errFlushUnsupported
	}
	c.mu.Unlock()
	before, err := c.Stats(ctx)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	if err := c.prepare(); err != nil {
		c.mu.Unlock()
		return 0, err
	}
	seq := c.nextSeq()
	c.w.reset()
	// Version 1 restricts the flush to nfgen_family (version 0 would mean
	// every family on older kernels).
	c.w.begin(ctMsgDelete, nlmFRequest|nlmFAck, seq, FamilyIPv4, 1)
	c.w.sourceFilter(src)
	c.w.end()
	err = c.dump(ctx, "filtered flush", seq, func(uint16, []byte) error { return nil })
	if err != nil {
		var errno unix.Errno
		if errors.As(err, &errno) && (errno == unix.EINVAL || errno == unix.EOPNOTSUPP) || errors.Is(err, ErrNotLoaded) {
			// Old kernels parse the lone source as an incomplete tuple and
			// refuse: nothing was flushed, fall back for good.
			c.flush = flushNo
			c.mu.Unlock()
			return 0, errFlushUnsupported
		}
		if errors.As(err, &errno) && errno == unix.ENOENT {
			err = nil // nothing matched
		} else {
			c.mu.Unlock()
			return 0, fmt.Errorf("purge %s: %w", src, err)
		}
	}
	c.flush = flushYes
	c.mu.Unlock()
	after, err := c.Stats(ctx)
	if err != nil {
		return 0, err
	}
	if after.Count >= before.Count {
		return 0, nil
	}
	return int(before.Count - after.Count), nil
}

// CountSource counts the entries whose original source lies in p.
func (c *Conn) CountSource(ctx context.Context, p netip.Prefix) (int, error) {
	if !p.IsValid() {
		return 0, fmt.Errorf("count: invalid prefix %v", p)
	}
	p = prefixset.Canonical(p)
	o := DumpOptions{Family: familyOf(p.Addr())}
	if p.IsSingleIP() {
		o.Source = p.Addr()
	}
	n := 0
	err := c.Dump(ctx, o, func(e *Entry) error {
		if p.Contains(e.Orig.Src) {
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", p, err)
	}
	return n, nil
}
