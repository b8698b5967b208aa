package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/ctguard/ctguard/internal/config"
	"github.com/ctguard/ctguard/internal/daemon"
)

func init() {
	register(&command{
		name:    "run",
		args:    "[--config FILE] [--dry-run]",
		summary: "run the guard: scan, decide, ban before conntrack, purge, explain (foreground daemon)",
		run:     runRun,
	})
}

// defaultMemoryLimit is the daemon's soft memory limit (the Go runtime's
// GOMEMLIMIT, which overrides it): the heap is collected harder near it,
// never refused.
const defaultMemoryLimit = 80 << 20

func runRun(ctx context.Context, e *env, args []string) error {
	c := commands["run"]
	fs := newFlags(c, e)
	cfgPath := fs.String("config", "", "configuration `FILE` (TOML); without it the built-in defaults apply")
	dryRun := fs.Bool("dry-run", false, "change nothing in the kernel: log and explain what would be done")
	sock := fs.String("socket", "", "`PATH` of the control socket to listen on (default: $CTGUARD_SOCKET, else daemon.socket of the config)")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	// One precedence for every command: --socket, $CTGUARD_SOCKET, the
	// config, the default.
	cfg.Daemon.Socket = cmp.Or(*sock, os.Getenv("CTGUARD_SOCKET"), cfg.Daemon.Socket)
	if *dryRun {
		cfg.Daemon.DryRun = true
	}
	if err := needRoot("run"); err != nil {
		return err
	}
	log := newLogger(e, cfg.Log)
	if os.Getenv("GOMEMLIMIT") == "" {
		// Collect before the heap doubles: on a full table of distinct
		// sources the daemon holds about 45 MiB live (BENCHMARKS.md).
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
	d, err := daemon.New(ctx, daemon.Options{Log: log, Config: cfg, CfgPath: *cfgPath})
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

func newLogger(e *env, c config.Log) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(e.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(e.stderr, opts))
}
