package enforce

import (
	"context"
	"log/slog"
	"net/netip"
)

// Exporting returns a Firewall that does what fw does and mirrors every
// change into the export set x: what fw's sets gain, x gains (with the
// same timeout), what they lose, x loses. The export is best effort: a
// failure is logged and never fails a ban. x must have timeout support, so
// that its elements end with their bans by themselves even when ctguard is
// not running to remove them.
func Exporting(fw Firewall, x *ExportSet, log *slog.Logger) Firewall {
	return &exportingFirewall{Firewall: fw, x: x, log: log}
}

type exportingFirewall struct {
	Firewall
	x   *ExportSet
	log *slog.Logger
}

func (f *exportingFirewall) Setup(ctx context.Context, elems []Element) (TableID, error) {
	id, err := f.Firewall.Setup(ctx, elems)
	if err == nil {
		f.add(ctx, elems)
	}
	return id, err
}

func (f *exportingFirewall) Apply(ctx context.Context, c Change) error {
	if err := f.Firewall.Apply(ctx, c); err != nil {
		return err
	}
	if len(c.Delete) > 0 {
		ps := make([]netip.Prefix, len(c.Delete))
		for i, e := range c.Delete {
			ps[i] = e.Prefix
		}
		if err := f.x.Remove(ctx, ps); err != nil {
			f.log.Warn("export set: removing ended bans failed", "set", f.x.Info().Name, "bans", len(ps), "err", err)
		}
	}
	f.add(ctx, c.Add)
	return nil
}

func (f *exportingFirewall) add(ctx context.Context, elems []Element) {
	if len(elems) == 0 {
		return
	}
	r, err := f.x.Add(ctx, elems)
	if err != nil {
		f.log.Warn("export set: adding bans failed", "set", f.x.Info().Name, "bans", len(elems), "err", err)
		return
	}
	for _, s := range r.Skipped {
		f.log.Info("export set cannot hold this ban", "set", f.x.Info().Name, "prefix", s.Prefix, "why", s.Reason)
	}
}
