package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/ctguard/ctguard/internal/config"
	"github.com/ctguard/ctguard/internal/daemon"
	"github.com/ctguard/ctguard/internal/journal"
	"github.com/ctguard/ctguard/internal/metrics"
	"github.com/ctguard/ctguard/internal/priority"
	"github.com/ctguard/ctguard/internal/sdnotify"
)

func init() {
	register(&command{
		name:    "run",
		args:    "[--config FILE] [--dry-run]",
		summary: "run the guard: scan, decide, ban before conntrack, purge, explain (foreground daemon)",
		flags:   runFlags,
		example: "  ctguard run --config /etc/ctguard/ctguard.toml\n  ctguard run --dry-run",
	})
}

// defaultMemoryLimit is the daemon's soft memory limit (the Go runtime's
// GOMEMLIMIT, which overrides it): the heap is collected harder near it,
// never refused.
const defaultMemoryLimit = 80 << 20

func runFlags(fs *pflag.FlagSet) action {
	cfgPath := fs.String("config", "", "configuration `FILE` (TOML; default "+defaultConfigPath+" when it exists, else the built-in defaults)")
	dryRun := fs.Bool("dry-run", false, "change nothing in the kernel: log and explain what would be done")
	sock := fs.String("socket", "", "`PATH` of the control socket to listen on (default: $CTGUARD_SOCKET, else daemon.socket of the config)")
	return func(ctx context.Context, e *env, args []string) error {
		cfg, from, err := loadConfig(*cfgPath)
		if err != nil {
			return err
		}
		path := *cfgPath
		if from != "the built-in defaults" {
			path = from // the default file, re-read on SIGHUP
		}
		// One precedence for every command: --socket, $CTGUARD_SOCKET, the
		// config, the default.
		cfg.Daemon.Socket = cmp.Or(*sock, os.Getenv("CTGUARD_SOCKET"), cfg.Daemon.Socket)
		if *dryRun {
			cfg.Daemon.DryRun = true
		}
		if err := needRoot(); err != nil {
			return err
		}
		log := newLogger(e, cfg.Log)
		if os.Getenv("GOMEMLIMIT") == "" {
			// Collect before the heap doubles: on a full table of distinct
			// sources the daemon holds about 45 MiB live (BENCHMARKS.md).
			debug.SetMemoryLimit(defaultMemoryLimit)
		}
		log.Info("configuration", "from", from)
		raisePriority(log, cfg.Daemon.Nice)
		// systemd (Type=notify): READY=1 after the first cycle, WATCHDOG=1
		// from the loop, STATUS=, STOPPING=1; nothing outside systemd.
		notify, err := sdnotify.FromEnv()
		if err != nil {
			log.Warn("systemd notifications", "err", err)
		}
		bi := readBuildInfo()
		d, err := daemon.New(ctx, daemon.Options{Log: log, Config: cfg, CfgPath: path, Notify: notify,
			Build: metrics.BuildInfo{Version: bi.Version, Commit: bi.Commit, GoVersion: bi.Go}})
		if err != nil {
			return explain(err)
		}
		defer d.Close()
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		errc := make(chan error, 2)
		go func() {
			if err := d.Serve(ctx, cfg.Daemon.Socket); err != nil {
				errc <- err
			}
		}()
		if cfg.Metrics.Listen != "" {
			go func() {
				if err := d.ServeMetrics(ctx, cfg.Metrics.Listen); err != nil {
					errc <- fmt.Errorf("metrics: %w", err)
				}
			}()
		}
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-hup:
					d.Reload()
				}
			}
		}()
		go func() { errc <- d.Run(ctx) }()
		err = <-errc
		cancel()
		if err == nil && cfg.Daemon.DryRun {
			log.Info("ctguard stopped (dry run: nothing was changed in the kernel)")
		} else if err == nil {
			log.Info("ctguard stopped; bans stay in the kernel until they expire")
		}
		return err
	}
}

// raisePriority puts the daemon ahead of the service it guards (package
// priority says why). Without CAP_SYS_NICE it warns and goes on: the
// systemd unit sets Nice= itself, having dropped that capability.
func raisePriority(log *slog.Logger, nice int) {
	res, err := priority.Raise(nice)
	switch {
	case err != nil:
		log.Warn("cannot raise the CPU priority: scans will slow down when the service keeps the CPUs busy (set Nice= in the unit, or run with CAP_SYS_NICE)",
			"nice", nice, "current", res.Before, "err", err)
	case res.Threads > 0:
		log.Info("cpu priority raised", "nice", res.After, "was", res.Before)
	default:
		log.Info("cpu priority", "nice", res.Before, "wanted", nice)
	}
}

func newLogger(e *env, c config.Log) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	// Under systemd each line starts with its syslog priority (<3> error
	// ... <7> debug), so journalctl -p warning finds WARN and ERROR;
	// anywhere else nothing is added.
	return slog.New(journal.Wrap(e.stderr, func(w io.Writer) slog.Handler {
		if c.Format == "json" {
			return slog.NewJSONHandler(w, opts)
		}
		return slog.NewTextHandler(w, opts)
	}))
}
