package enforce

import (
	"context"
	"net/netip"

	"github.com/ctguard/ctguard/internal/conntrack"
)

// DryPurger counts what a purge would delete and deletes nothing: the
// purger of a dry run, on a real connection to the table.
func DryPurger(c *conntrack.Conn) Purger { return dryPurger{c} }

// dryPurger counts what a purge would delete and deletes nothing.
type dryPurger struct{ c *conntrack.Conn }

func (p dryPurger) PurgeSource(ctx context.Context, pfx netip.Prefix) (int, error) {
	return p.c.CountSource(ctx, pfx)
}

func (p dryPurger) CountSource(ctx context.Context, pfx netip.Prefix) (int, error) {
	return p.c.CountSource(ctx, pfx)
}

// PurgeSources counts what a batch purge would delete, in one table pass.
func (p dryPurger) PurgeSources(ctx context.Context, ps []netip.Prefix) ([]int, error) {
	return p.c.CountSources(ctx, ps)
}

// CountSources counts in one table pass.
func (p dryPurger) CountSources(ctx context.Context, ps []netip.Prefix) ([]int, error) {
	return p.c.CountSources(ctx, ps)
}

// Dump walks the table (the valve reads it).
func (p dryPurger) Dump(ctx context.Context, o conntrack.DumpOptions, fn func(*conntrack.Entry) error) error {
	return p.c.Dump(ctx, o, fn)
}

// DeleteEntries deletes nothing and says how many it would have.
func (p dryPurger) DeleteEntries(ctx context.Context, es []conntrack.Entry) (int, error) {
	return len(es), nil
}

// PurgeSourcesKeeping counts what a scoped purge would delete.
func (p dryPurger) PurgeSourcesKeeping(ctx context.Context, ps []netip.Prefix, keep []uint16) ([]int, error) {
	return p.c.CountSourcesKeeping(ctx, ps, keep)
}

// CountSourcesKeeping counts in one table pass.
func (p dryPurger) CountSourcesKeeping(ctx context.Context, ps []netip.Prefix, keep []uint16) ([]int, error) {
	return p.c.CountSourcesKeeping(ctx, ps, keep)
}

var (
	_ BatchPurger   = dryPurger{}
	_ KeepingPurger = dryPurger{}
	_ EntryPurger   = dryPurger{}
)
