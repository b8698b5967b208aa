package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/config"
	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/scan"
	"github.com/ctguard/ctguard/internal/sockets"
	"github.com/ctguard/ctguard/internal/store"
)

// Parts are the running parts a loaded configuration makes: the table
// reader, the ban store, the allowlist's sources and the enforcement
// engine. `ctguard run` and every command that works without a daemon
// open them here, so the allowlist, the state directory, the SSH ports and
// the firewall agree everywhere.
type Parts struct {
	Source *scan.Source // nil unless PartsOptions.Reader
	Store  *store.Store
	Engine *enforce.Engine
	Allow  allow.Config
	// Moved is where a damaged store was moved aside (MoveDamaged), or "".
	Moved string
	// Backend is the firewall in use and Why the reason it was chosen
	// (enforce.backend; "" for a stand-in).
	Backend enforce.Backend
	Why     string
	closers []func()
}

// PartsOptions say which parts to open, and replace some in tests.
type PartsOptions struct {
	Log *slog.Logger
	// Reader opens the table reader.
	Reader bool
	// Kernel claims this namespace's ctguard table (one ctguard per
	// namespace) and opens the conntrack purger and the socket closer;
	// without it the firewall is only read (counters) and nothing changes.
	Kernel bool
	// DryRun: a throw-away store, a firewall that changes nothing, purges
	// that only count and sockets that stay open.
	DryRun bool
	// MoveDamaged moves a damaged store aside and starts a new one (the
	// daemon, which then adopts the bans still in the kernel); otherwise a
	// damaged store is an error (store.ErrDamaged).
	MoveDamaged bool
	// Interfaces and SSHPeers are the allowlist's sources of local
	// addresses and SSH sessions; nil: the defaults of package allow.
	Interfaces func() ([]netip.Prefix, error)
	SSHPeers   func(ports []uint16) ([]netip.AddrPort, error)
	// Firewall, Purger and Closer replace the real ones (tests).
	Firewall enforce.Firewall
	Purger   enforce.Purger
	Closer   enforce.SocketCloser
}

// OpenParts opens the parts of configuration c. The caller closes them.
func OpenParts(ctx context.Context, c config.Config, o PartsOptions) (*Parts, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	p := &Parts{Allow: AllowConfig(c, o.Interfaces, o.SSHPeers)}
	fail := func(err error) (*Parts, error) {
		p.Close()
		return nil, err
	}
	if o.Reader {
		src, err := scan.Open(ctx, c.Daemon.Reader, c.Daemon.Procfs)
		if err != nil {
			return fail(err)
		}
		p.closers = append(p.closers, func() { src.Close() })
		src.Sockets = c.Daemon.Sockets
		p.Source = src
	}

	stateDir := c.Daemon.StateDir
	if o.DryRun {
		// A dry run must not touch the real ban list, nor lock it.
		tmp, err := os.MkdirTemp("", "ctguard-dry-run-")
		if err != nil {
			return fail(fmt.Errorf("dry-run store: %w", err))
		}
		p.closers = append(p.closers, func() { os.RemoveAll(tmp) })
		stateDir = tmp
	}
	st, err := store.Open(stateDir, store.Options{})
	if errors.Is(err, store.ErrDamaged) && o.MoveDamaged {
		moved, merr := store.MoveAside(stateDir, time.Now())
		if merr != nil {
			return fail(fmt.Errorf("%w (and %w)", err, merr))
		}
		p.Moved = moved
		o.Log.Error("the store was damaged: moved it aside and started a new one; bans still in the kernel are kept",
			"err", err, "moved_to", moved)
		st, err = store.Open(stateDir, store.Options{})
	}
	if err != nil {
		return fail(err)
	}
	p.closers = append(p.closers, func() { st.Close() })
	p.Store = st

	fw, purger, closer := o.Firewall, o.Purger, o.Closer
	switch {
	case fw != nil:
	case o.DryRun:
		fw = enforce.NewFake(nil)
	case o.Kernel:
		lock, err := enforce.LockTable()
		if err != nil {
			return fail(err)
		}
		p.closers = append(p.closers, func() { lock.Release() })
		// auto probes what this kernel and host offer (throw-away objects
		// only); a forced backend that lacks a feature is an error naming it.
		b, why, err := enforce.ChooseBackend(c.Enforce.Backend, enforce.Probe(ctx, enforce.ProbeOptions{Want: c.Enforce.Backend}))
		if err != nil {
			return fail(fmt.Errorf("enforce.backend: %w", err))
		}
		if fw, err = enforce.NewBackend(b, o.Log, enforce.BackendOptions{SSHPorts: p.Allow.SSHPorts}); err != nil {
			return fail(err)
		}
		p.Backend, p.Why = b, why
		if name := c.Enforce.ExportSet; name != "" {
			fw = exportTo(ctx, fw, name, st, o.Log)
		}
	default:
		// Only read (the drop counters, the sets), without probing: no
		// claim on the table, nothing created. auto reads nftables.
		b := enforce.BackendNFTables
		if c.Enforce.Backend == enforce.WantIPSet {
			b = enforce.BackendIPSet
		}
		var err error
		if fw, err = enforce.NewBackend(b, o.Log, enforce.BackendOptions{SSHPorts: p.Allow.SSHPorts}); err != nil {
			return fail(err)
		}
		p.Backend, p.Why = b, "read only: enforce.backend "+c.Enforce.Backend
	}
	if o.Kernel {
		if purger == nil {
			conn := (*conntrack.Conn)(nil)
			if p.Source != nil {
				conn = p.Source.Conn()
			}
			if conn == nil {
				if c, err := conntrack.Open(); err != nil {
					// Bans still work without conntrack access; purges report it.
					o.Log.Warn("conntrack unavailable: bans will not purge entries", "err", err)
				} else {
					conn = c
					p.closers = append(p.closers, func() { c.Close() })
				}
			}
			if conn != nil {
				purger = conn
				if o.DryRun {
					purger = enforce.DryPurger(conn)
				}
			}
		}
		if closer == nil && c.Daemon.CloseSockets {
			// Known from the kernel's build config, or found out at the first
			// ban (EOPNOTSUPP turns it off with the same warning).
			kernel := ""
			if sys, err := scan.ReadSysctls(c.Daemon.Procfs); err == nil {
				kernel = sys.Kernel
			}
			if ok, known := sockets.DestroySupport(c.Daemon.Procfs, "/boot", kernel); known && !ok {
				o.Log.Warn("bans will not close the banned peers' sockets: the service keeps serving what they hold until it times them out",
					"why", sockets.ErrDestroyUnsupported)
			} else {
				closer = &sockets.Closer{DryRun: o.DryRun}
			}
		}
	}
	// No allowlist cache: the SSH sessions must be current at every ban, and
	// the rest (addresses, routes, resolv.conf) is cheap to read.
	p.Engine = enforce.New(enforce.Config{Store: st, Firewall: fw, Purger: purger, Closer: closer, Log: o.Log, Allow: p.Allow, DryRun: o.DryRun})
	return p, nil
}

// Close closes what OpenParts opened, in reverse order.
func (p *Parts) Close() {
	for i := len(p.closers) - 1; i >= 0; i-- {
		p.closers[i]()
	}
	p.closers = nil
}

// AllowConfig is where the allowlist comes from under configuration c:
// the configured addresses, the SSH ports, resolv.conf, and the local
// addresses and SSH sessions from the given sources (nil: package allow's
// defaults).
func AllowConfig(c config.Config, interfaces func() ([]netip.Prefix, error), sessions func([]uint16) ([]netip.AddrPort, error)) allow.Config {
	prefixes, _ := c.AllowPrefixes() // validated at load
	var static []allow.Entry
	for _, p := range prefixes {
		static = append(static, allow.Entry{Prefix: p, Source: allow.Configured, Detail: "allow.addresses"})
	}
	ports := make([]uint16, len(c.Allow.SSHPorts))
	for i, p := range c.Allow.SSHPorts {
		ports[i] = uint16(p)
	}
	return allow.Config{ProcRoot: c.Daemon.Procfs, ResolvConf: c.Allow.ResolvConf, SSHPorts: ports,
		Static: static, InterfaceAddrs: interfaces, SSHPeers: sessions}
}

// exportTo mirrors fw's bans into the host's ipset name
// (enforce.export_set); a set that is missing or unusable is logged, and fw
// is used alone: local defence first. st's records tell, in a set without
// timeouts or comments, ctguard's leftovers from the host's own elements.
func exportTo(ctx context.Context, fw enforce.Firewall, name string, st *store.Store, log *slog.Logger) enforce.Firewall {
	x, err := enforce.OpenExportSet(ctx, name, enforce.ExportOptions{})
	if err != nil {
		log.Error("enforce.export_set: nothing is exported", "set", name, "err", err)
		return fw
	}
	info := x.Info()
	ends := "by the set's own timeouts"
	if !info.Timeouts {
		ends = "removed by ctguard (the set has no timeouts): at each check, and at start for bans that ended while it was stopped"
	}
	log.Info("exporting bans", "set", name, "type", info.Type, "family", info.Family, "prefixes", info.Prefixes, "comments", info.Comments, "ends", ends)
	known := func(p netip.Prefix) bool {
		_, err := st.GetBan(p)
		return err == nil
	}
	return enforce.Exporting(fw, x, log, enforce.ExportingOptions{Known: known})
}
