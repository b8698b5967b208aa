package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/ctguard/ctguard/internal/config"
	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/scan"
	"github.com/ctguard/ctguard/internal/snapshot"
)

// scanFlags are the flags of every command that reads the table.
type scanFlags struct {
	cfgFlags
	from     string // the configuration read: its file, or the built-in defaults
	reader   string
	procfs   string
	v4Bits   int
	v6Bits   int
	idleSecs uint
	sockets  bool
}

func (f *scanFlags) register(fs *pflag.FlagSet) {
	f.cfgFlags.register(fs)
	fs.StringVar(&f.reader, "reader", scan.Auto, "how to read the table, a `READER`: auto (netlink, else /proc), netlink, or proc")
	fs.StringVar(&f.procfs, "procfs", "/proc", "procfs root (for sysctls and the /proc reader)")
	fs.IntVar(&f.v4Bits, "v4-prefix", snapshot.DefaultV4Bits, "IPv4 prefix length (`BITS`) that sources are grouped by")
	fs.IntVar(&f.v6Bits, "v6-prefix", snapshot.DefaultV6Bits, "IPv6 prefix length (`BITS`) that sources are grouped by")
	fs.BoolVar(&f.sockets, "sockets", true, "list TCP sockets to count orphan entries (ESTABLISHED in conntrack, no socket behind them or one whose client never sent a byte)")
	fs.UintVar(&f.idleSecs, "idle-threshold", snapshot.DefaultIdleThreshold, "`SECONDS` without traffic after which an ESTABLISHED entry counts as idle")
}

// configure loads the configuration and takes from it every scan setting
// not given as a flag; it returns the configuration.
func (f *scanFlags) configure() (config.Config, error) {
	cfg, from, err := f.load()
	if err != nil {
		return cfg, err
	}
	f.from = from
	if !f.changed("reader") {
		f.reader = cfg.Daemon.Reader
	}
	if !f.changed("procfs") {
		f.procfs = cfg.Daemon.Procfs
	}
	if !f.changed("v4-prefix") {
		f.v4Bits = cfg.Snapshot.V4Prefix
	}
	if !f.changed("v6-prefix") {
		f.v6Bits = cfg.Snapshot.V6Prefix
	}
	if !f.changed("idle-threshold") {
		f.idleSecs = uint(cfg.Snapshot.IdleThreshold / time.Second)
	}
	if !f.changed("sockets") {
		f.sockets = cfg.Daemon.Sockets
	}
	return cfg, nil
}

// setup configures and validates the scan flags and returns the control
// socket to ask a daemon on.
func (f *scanFlags) setup() (string, error) {
	cfg, err := f.configure()
	if err != nil {
		return "", err
	}
	if err := f.validate(); err != nil {
		return "", err
	}
	return f.socketPath(cfg), nil
}

func (f *scanFlags) validate() error {
	switch f.reader {
	case scan.Auto, scan.Netlink, scan.Proc:
	default:
		return usagef("--reader %q: want auto, netlink or proc", f.reader)
	}
	if f.v4Bits < 8 || f.v4Bits > 32 {
		return usagef("--v4-prefix %d: want 8 to 32", f.v4Bits)
	}
	if f.v6Bits < 16 || f.v6Bits > 128 {
		return usagef("--v6-prefix %d: want 16 to 128", f.v6Bits)
	}
	if f.idleSecs == 0 || f.idleSecs > 432000 {
		return usagef("--idle-threshold %d: want 1 to 432000 seconds", f.idleSecs)
	}
	return nil
}

// scanner is an open table reader plus the aggregator configured for this
// host: its local addresses and its timeouts.
type scanner struct {
	src  *scan.Source
	agg  *snapshot.Aggregator
	sys  scan.Sysctls
	flag *scanFlags
}

func (f *scanFlags) open(ctx context.Context) (*scanner, error) {
	sys, err := scan.ReadSysctls(f.procfs)
	if err != nil {
		return nil, explain(err)
	}
	src, err := scan.Open(ctx, f.reader, f.procfs)
	if err != nil {
		return nil, explain(err)
	}
	src.Sockets = f.sockets
	local, err := scan.LocalAddrs()
	if err != nil {
		src.Close()
		return nil, err
	}
	cfg := sys.SnapshotConfig(snapshot.Config{
		IdleThreshold: uint32(f.idleSecs),
		V4Bits:        f.v4Bits,
		V6Bits:        f.v6Bits,
		Local:         local,
	})
	return &scanner{src: src, agg: snapshot.NewAggregator(cfg), sys: sys, flag: f}, nil
}

func (s *scanner) close() { s.src.Close() }

func (s *scanner) scan(ctx context.Context) (*snapshot.Snapshot, error) {
	snap, err := s.src.Scan(ctx, s.agg)
	return snap, explain(err)
}

// explain adds the action a user can take to the errors they meet first.
func explain(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, conntrack.ErrNotLoaded):
		return fmt.Errorf("%w: this host tracks no connections, so its table cannot fill; nothing to do (modprobe nf_conntrack to enable tracking)", err)
	case errors.Is(err, conntrack.ErrNoProcFile):
		return fmt.Errorf("--reader proc: %w", err)
	}
	return err
}
