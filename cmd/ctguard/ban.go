package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/config"
	"github.com/ctguard/ctguard/internal/daemon"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/human"
	"github.com/ctguard/ctguard/internal/store"
)

func init() {
	register(&command{
		name:    "ban",
		args:    "ADDR|CIDR | --from FILE [--ttl D] [--reason TEXT]",
		summary: "ban an address or prefix before conntrack, then purge its conntrack entries",
		flags:   banFlags,
		example: "  ctguard ban 203.0.113.7\n  ctguard ban 198.51.100.0/24 --ttl 12h --reason \"scanner\"\n  ctguard ban --from bad-hosts.txt --json",
		maxArgs: 1,
	})
}

// enforcer is what the enforcement commands (ban, unban, list, allow,
// purge) need. When a daemon answers on the control socket it is a
// *daemon.Client (the daemon owns the store and the table); otherwise an
// *enforce.Engine opened in this process on the store and the kernel. The
// commands do not care which, and never block on the database lock.
type enforcer interface {
	Ban(ctx context.Context, r enforce.BanRequest) (enforce.BanResult, error)
	BanMany(ctx context.Context, rs []enforce.BanRequest) ([]enforce.BanResult, error)
	Unban(ctx context.Context, p netip.Prefix) (store.Ban, error)
	UnbanMany(ctx context.Context, ps []netip.Prefix, all bool) ([]enforce.UnbanResult, error)
	List(all bool) ([]store.Ban, error)
	Allow(ctx context.Context, p netip.Prefix, ttl time.Duration, note string) (enforce.AllowResult, error)
	RemoveAllow(p netip.Prefix) error
	Allowlist() (*allow.List, error)
	Purge(ctx context.Context, p netip.Prefix) (enforce.PurgeResult, error)
	Counters(ctx context.Context) (enforce.Counters, error)
	// DryRun: a dry-run daemon answered; nothing it reports was done.
	DryRun() bool
}

var (
	_ enforcer = (*enforce.Engine)(nil)
	_ enforcer = (*daemon.Client)(nil)
)

// enforceFlags are the flags shared by the enforcement commands.
type enforceFlags struct {
	cfgFlags
	stateDir   string
	procfs     string
	resolvConf string
	sshPorts   string
	json       bool
	// parsed
	ports []uint16
}

func (f *enforceFlags) register(fs *pflag.FlagSet) {
	f.cfgFlags.register(fs)
	fs.StringVar(&f.stateDir, "state-dir", "", "`DIR` of the ban database when no daemon runs (default $CTGUARD_STATE_DIR, else daemon.state_dir of the configuration)")
	fs.StringVar(&f.procfs, "procfs", "/proc", "procfs root for the allowlist (routes, SSH sessions)")
	fs.StringVar(&f.resolvConf, "resolv-conf", "/etc/resolv.conf", "resolv.conf whose nameservers are allowlisted")
	fs.StringVar(&f.sshPorts, "ssh-ports", "22", "`PORTS` (comma-separated) of sshd whose open sessions' peers are allowlisted (default allow.ssh_ports of the configuration)")
	fs.BoolVar(&f.json, "json", false, "print JSON (one object per target; schema, time, result)")
}

func (f *enforceFlags) validate() error {
	f.ports = nil
	for _, s := range strings.Split(f.sshPorts, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
		if err != nil || n == 0 {
			return usagef("--ssh-ports %q: want comma-separated port numbers 1-65535", f.sshPorts)
		}
		f.ports = append(f.ports, uint16(n))
	}
	return nil
}

// config loads the configuration and lays the flags given over it.
func (f *enforceFlags) config() (config.Config, error) {
	cfg, _, err := f.load()
	if err != nil {
		return cfg, err
	}
	cfg.Daemon.StateDir = cmp.Or(f.stateDir, os.Getenv("CTGUARD_STATE_DIR"), cfg.Daemon.StateDir)
	if f.changed("procfs") {
		cfg.Daemon.Procfs = f.procfs
	}
	if f.changed("resolv-conf") {
		cfg.Allow.ResolvConf = f.resolvConf
	}
	if f.changed("ssh-ports") {
		cfg.Allow.SSHPorts = nil
		for _, p := range f.ports {
			cfg.Allow.SSHPorts = append(cfg.Allow.SSHPorts, int(p))
		}
	}
	return cfg, nil
}

// geteuid is replaced in tests.
var geteuid = os.Geteuid

// needRoot says plainly that a command needs root, instead of a permission
// error from deep inside netlink or the database.
func needRoot() error {
	if geteuid() != 0 {
		return fmt.Errorf("needs root (it reads and changes the firewall, conntrack table and %s): run with sudo", store.DefaultDir)
	}
	return nil
}

// session is an open enforcer and what to close after.
type session struct {
	enforcer
	close func()
}

// open returns the running daemon's client when one answers on the
// control socket, else opens the parts of the configuration here
// (daemon.OpenParts, as ctguard run does). kernel=false (list, why) opens
// only the store and the allowlist, so reading changes nothing.
func (f *enforceFlags) open(ctx context.Context, e *env, kernel bool) (*session, error) {
	cfg, err := f.config()
	if err != nil {
		return nil, err
	}
	sock := f.socketPath(cfg)
	if cl, err := daemon.Dial(sock); err == nil {
		return &session{enforcer: cl, close: func() {}}, nil
	}
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	parts, err := daemon.OpenParts(ctx, cfg, daemon.PartsOptions{Log: log, Kernel: kernel})
	switch {
	case errors.Is(err, store.ErrLocked):
		// A daemon holds the store but does not answer on the socket.
		return nil, fmt.Errorf("%w, but no daemon answers on %s (pass --socket, or stop the other process)", err, sock)
	case errors.Is(err, store.ErrDamaged):
		return nil, fmt.Errorf("%w\n(starting the daemon moves the file aside, starts a new store and keeps the bans still in the kernel; or move it aside yourself)", err)
	case errors.Is(err, enforce.ErrTableOwned):
		return nil, fmt.Errorf("%w, but it does not answer on %s (pass its --socket)", err, sock)
	case err != nil:
		return nil, explain(err)
	}
	if kernel {
		r, err := parts.Engine.Reconcile(ctx)
		if err != nil {
			parts.Close()
			return nil, err
		}
		if r.Rebuilt {
			fmt.Fprintf(e.stderr, "restored table inet %s (%s) with %s\n", enforce.TableName, r.Problem, plural(r.Restored, "ban", "bans"))
		}
	}
	return &session{enforcer: parts.Engine, close: parts.Close}, nil
}

// targetArg parses a command's one ADDR|CIDR argument; the note says how
// a loose form was read (an address with host bits, say).
func targetArg(args []string) (netip.Prefix, string, error) {
	if len(args) == 0 {
		return netip.Prefix{}, "", usagef("missing ADDR|CIDR")
	}
	if len(args) > 1 {
		return netip.Prefix{}, "", usagef("unexpected argument %q: one ADDR|CIDR (--from FILE takes a list)", args[1])
	}
	p, note, err := enforce.ParseTarget(args[0])
	if err != nil {
		return netip.Prefix{}, "", usagef("%v", err)
	}
	return p, note, nil
}

// targetCommand parses a command's one ADDR|CIDR, runs check (flag values
// that need parsing), then checks privileges and opens the enforcer. The
// caller closes the session.
func targetCommand(ctx context.Context, e *env, ef *enforceFlags, args []string, check func() error) (netip.Prefix, *session, error) {
	p, note, err := targetArg(args)
	if err != nil {
		return p, nil, err
	}
	if check != nil {
		if err := check(); err != nil {
			return p, nil, err
		}
	}
	if err := ef.validate(); err != nil {
		return p, nil, err
	}
	if err := needRoot(); err != nil {
		return p, nil, err
	}
	if note != "" {
		fmt.Fprintln(e.stderr, note)
	}
	s, err := ef.open(ctx, e, true)
	return p, s, err
}

func banFlags(fs *pflag.FlagSet) action {
	var ef enforceFlags
	ef.register(fs)
	ttlS := fs.String("ttl", human.Duration(enforce.DefaultTTL), fmt.Sprintf("how long the ban lasts, a `DURATION` from %s to %s (90s, 30m, 12h, 7d)", enforce.MinTTL, human.Duration(enforce.MaxTTL)))
	reason := fs.String("reason", "manual", "why, as `TEXT` recorded with the ban")
	from := fs.String("from", "", "ban every ADDR|CIDR listed in `FILE`, one a line (- reads stdin), in one batch")
	return func(ctx context.Context, e *env, args []string) error {
		var ttl time.Duration
		if fs.Changed("from") {
			if len(args) > 0 {
				return usagef("unexpected argument %q: --from reads the targets from FILE", args[0])
			}
			if ttl, err := enforce.ParseTTL(*ttlS); err != nil {
				return usagef("--ttl: %v", err)
			} else if err := ef.validate(); err != nil {
				return err
			} else if err := needRoot(); err != nil {
				return err
			} else {
				ps, err := readTargets(e, *from)
				if err != nil {
					return err
				}
				s, err := ef.open(ctx, e, true)
				if err != nil {
					return err
				}
				defer s.close()
				return bulkBan(ctx, e, s, ps, ef.json, enforce.BanRequest{TTL: ttl, Reason: *reason, Evidence: "manual bulk ban from the command line",
					Origin: store.OriginManual, ExactTTL: fs.Changed("ttl")})
			}
		}
		p, s, err := targetCommand(ctx, e, &ef, args, func() (err error) {
			if ttl, err = enforce.ParseTTL(*ttlS); err != nil {
				return usagef("--ttl: %v", err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		defer s.close()
		r, err := s.Ban(ctx, enforce.BanRequest{Prefix: p, TTL: ttl, Reason: *reason, Evidence: "manual ban from the command line",
			Origin: store.OriginManual, ExactTTL: fs.Changed("ttl")})
		if ef.json {
			r.Prefix = p
			if err != nil && r.Err == nil {
				r.Err = err
			}
			if jerr := writeActions(e.stdout, banAction(r, s.DryRun())); jerr != nil {
				return jerr
			}
			return err
		}
		if err != nil {
			return err
		}
		printBan(e, r, ttl, s.DryRun())
		return nil
	}
}

// dryRunNote ends every reply of a dry-run daemon.
const dryRunNote = "dry run: the daemon changes nothing in the kernel; this is what it would do"

// printBan says what a ban did; asked is the timeout the operator asked for.
// Through a dry-run daemon it says what the ban would do.
func printBan(e *env, r enforce.BanResult, asked time.Duration, dry bool) {
	if dry {
		defer fmt.Fprintf(e.stdout, "(%s)\n", dryRunNote)
	}
	w := func(done, would string) string {
		if dry {
			return would
		}
		return done
	}
	if r.CoveredBy.IsValid() {
		fmt.Fprintf(e.stdout, "%s is already covered by the active ban of %s: nothing changed\n", r.Prefix, r.CoveredBy)
		return
	}
	ttl := cmp.Or(r.TTL, asked)
	verb := w("banned", "would ban")
	switch {
	case r.Refreshed && ttl > asked:
		verb = w("re-banned", "would re-ban") + " (it keeps its longer timeout; --ttl sets a shorter one)"
	case r.Refreshed:
		verb = w("re-banned", "would re-ban") + " (timeout renewed)"
	}
	fmt.Fprintf(e.stdout, "%s %s for %s, until %s (ban #%d)\n", verb, r.Prefix, human.Duration(ttl), human.Time(r.Ban.Expires), r.Ban.Count)
	if r.Scoped {
		fmt.Fprintf(e.stdout, "  SSH ports left open: it covers the peer of an open SSH session\n")
	}
	for _, q := range r.Replaced {
		fmt.Fprintf(e.stdout, "  replaces the ban of %s (inside it)\n", q)
	}
	if r.Ban.PurgeErr != "" {
		fmt.Fprintf(e.stdout, "  conntrack entries not purged: %s\n", r.Ban.PurgeErr)
	} else {
		if dry {
			fmt.Fprintf(e.stdout, "  would purge %s\n", plural(r.Ban.Purged, "conntrack entry", "conntrack entries"))
		} else {
			fmt.Fprintf(e.stdout, "  purged %s, %d remain\n", plural(r.Ban.Purged, "conntrack entry", "conntrack entries"), r.Ban.Remaining)
		}
	}
	fmt.Fprintf(e.stdout, "  %s %d of this host's TCP sockets held by it\n", w("closed", "would close"), r.Ban.SocketsClosed)
	if r.Ban.CloseErr != "" {
		fmt.Fprintf(e.stdout, "  sockets not closed: %s\n", r.Ban.CloseErr)
	}
}

// parseAllowTTL is ParseTTL for allow entries, as a usage error.
func parseAllowTTL(s string) (time.Duration, error) {
	d, err := enforce.ParseTTL(s)
	if err != nil {
		return 0, usagef("--ttl: %v", err)
	}
	return d, nil
}
