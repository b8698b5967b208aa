package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/ctguard/ctguard/test/e2e/baseline"
	"github.com/ctguard/ctguard/test/e2e/gen"
	"github.com/ctguard/ctguard/test/e2e/monitor"
	"github.com/ctguard/ctguard/test/e2e/topo"
	"github.com/ctguard/ctguard/test/e2e/victim"
	"github.com/ctguard/ctguard/test/e2e/wire"
)

// The role commands run inside one namespace and report JSON lines on stdout.

func init() {
	register(&command{"server", "victim server: TCP 22/80/443 (defer-accept on 443), UDP 443", runServer})
	register(&command{"monitor", "sample the namespace's conntrack table every 250 ms", runMonitor})
	register(&command{"baseline", "the brief's method: ban sources with more than 30 entries", runBaseline})
	register(&command{"bots", "silent established bots", runBots})
	register(&command{"flood", "spoofed SYN or UDP flood (raw socket)", runFlood})
	register(&command{"crowd", "benign crowd of short request/response connections", runCrowd})
	register(&command{"nat", "NAT gateways with many live users each", runNAT})
	register(&command{"probes", "a fresh legit connection every interval, success and latency", runProbes})
}

type prefixFlag struct{ p *netip.Prefix }

func (f prefixFlag) String() string {
	if f.p == nil || !f.p.IsValid() {
		return ""
	}
	return f.p.String()
}
func (f prefixFlag) Set(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return err
	}
	*f.p = p
	return nil
}

type addrPortFlag struct{ a *netip.AddrPort }

func (f addrPortFlag) String() string {
	if f.a == nil || !f.a.IsValid() {
		return ""
	}
	return f.a.String()
}
func (f addrPortFlag) Set(s string) error {
	a, err := netip.ParseAddrPort(s)
	if err != nil {
		return err
	}
	*f.a = a
	return nil
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func durationFlag(fs *flag.FlagSet) *time.Duration {
	return fs.Duration("duration", 0, "hard time bound (required)")
}

func needDuration(d time.Duration) error {
	if d <= 0 {
		return usagef("--duration is required and must be positive")
	}
	return nil
}

func runServer(ctx context.Context, e *env, args []string) error {
	fs := newFlags("server", e)
	d := durationFlag(fs)
	deferSec := fs.Int("defer-seconds", 30, "TCP_DEFER_ACCEPT seconds on 443")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := needDuration(*d); err != nil {
		return err
	}
	srv, err := victim.Start(victim.Config{DeferSeconds: *deferSec}, e.log)
	if err != nil {
		return err
	}
	defer srv.Close()
	w := wire.NewWriter(e.stdout)
	_ = w.Write(wire.Record{Kind: "ready"})
	ctx, cancel := context.WithTimeout(ctx, *d)
	defer cancel()
	<-ctx.Done()
	_ = w.Write(wire.Record{Kind: "log", Msg: fmt.Sprintf("server: %d requests, %d live", srv.Requests(), srv.Live())})
	return nil
}

func runMonitor(ctx context.Context, e *env, args []string) error {
	fs := newFlags("monitor", e)
	d := durationFlag(fs)
	iv := fs.Duration("interval", 250*time.Millisecond, "sample interval")
	se := fs.Duration("states-every", 5*time.Second, "state-count interval (negative: off)")
	var sets listFlag
	fs.Var(&sets, "ipset", "ipset whose members are the defense's bans (repeatable)")
	nft := fs.String("nft-table", "", `nftables table whose sets hold bans ("inet ctguard")`)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := needDuration(*d); err != nil {
		return err
	}
	return monitor.Run(ctx, monitor.Config{Interval: *iv, StatesEvery: *se, Duration: *d, IPSets: sets, NFTTable: *nft,
		AttackRanges: topo.AttackRanges}, wire.NewWriter(e.stdout), e.log)
}

func runBaseline(ctx context.Context, e *env, args []string) error {
	fs := newFlags("baseline", e)
	d := durationFlag(fs)
	iv := fs.Duration("interval", 5*time.Second, "pause between runs")
	th := fs.Int("threshold", 30, "ban sources with more entries than this")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := needDuration(*d); err != nil {
		return err
	}
	return baseline.Run(ctx, baseline.Exec{}, baseline.Config{Threshold: *th, Interval: *iv, Duration: *d}, wire.NewWriter(e.stdout), e.log)
}

func sourcesFlags(fs *flag.FlagSet) *gen.Sources {
	s := &gen.Sources{}
	fs.Var(prefixFlag{&s.Prefix}, "src", "source prefix (AnyIP-routed in this namespace)")
	fs.Func("layout", "source layout: seq, per64, spread24", func(v string) error { s.Layout = gen.Layout(v); return nil })
	fs.IntVar(&s.Nets, "nets", 0, "spread24: number of /24s")
	return s
}

func runBots(ctx context.Context, e *env, args []string) error {
	fs := newFlags("bots", e)
	var c gen.BotConfig
	src := sourcesFlags(fs)
	fs.IntVar(&c.N, "n", 0, "sources")
	fs.IntVar(&c.PerSource, "per-source", 0, "connections per source")
	fs.IntVar(&c.Active, "active", 0, "sources active at a time")
	fs.Float64Var(&c.Rate, "rate", 0, "connections per second")
	fs.IntVar(&c.Workers, "workers", 0, "connects in flight at most (0: 16384)")
	fs.Var(addrPortFlag{&c.Dst}, "dst", "victim address:port")
	fs.DurationVar(&c.Duration, "duration", 0, "hard time bound (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	c.Sources = *src
	if err := c.Validate(); err != nil {
		return usagef("%v", err)
	}
	return gen.Bots(ctx, c, wire.NewWriter(e.stdout))
}

func runFlood(ctx context.Context, e *env, args []string) error {
	fs := newFlags("flood", e)
	var c gen.FloodConfig
	fs.StringVar(&c.Proto, "proto", "syn", "syn or udp")
	fs.Var(prefixFlag{&c.Src}, "src", "spoofed source prefix")
	fs.Var(addrPortFlag{&c.Dst}, "dst", "victim address:port")
	fs.Float64Var(&c.Rate, "rate", 0, "packets per second")
	fs.Int64Var(&c.Count, "count", 0, "packet bound")
	fs.DurationVar(&c.Duration, "duration", 0, "hard time bound (required)")
	fs.Uint64Var(&c.Seed, "seed", 1, "random seed")
	if err := parse(fs, args); err != nil {
		return err
	}
	return gen.Flood(ctx, c, wire.NewWriter(e.stdout))
}

func runCrowd(ctx context.Context, e *env, args []string) error {
	fs := newFlags("crowd", e)
	var c gen.CrowdConfig
	src := sourcesFlags(fs)
	fs.IntVar(&c.N, "n", 0, "sources")
	fs.Float64Var(&c.Rate, "rate", 0, "connections per second")
	fs.Var(addrPortFlag{&c.Dst}, "dst", "victim address:port")
	fs.DurationVar(&c.Duration, "duration", 0, "hard time bound (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	c.Sources = *src
	return gen.Crowd(ctx, c, wire.NewWriter(e.stdout))
}

func runNAT(ctx context.Context, e *env, args []string) error {
	fs := newFlags("nat", e)
	var c gen.NATConfig
	gws := fs.String("gateways", "", "comma-separated gateway addresses")
	fs.IntVar(&c.Users, "users", 60, "live users per gateway")
	fs.DurationVar(&c.Interval, "interval", 3*time.Second, "request interval per user")
	fs.Var(addrPortFlag{&c.Dst}, "dst", "victim address:port")
	fs.DurationVar(&c.Duration, "duration", 0, "hard time bound (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	for _, g := range strings.Split(*gws, ",") {
		a, err := netip.ParseAddr(strings.TrimSpace(g))
		if err != nil {
			return usagef("--gateways: %v", err)
		}
		c.Gateways = append(c.Gateways, a)
	}
	return gen.NAT(ctx, c, wire.NewWriter(e.stdout))
}

func runProbes(ctx context.Context, e *env, args []string) error {
	fs := newFlags("probes", e)
	var c gen.ProbeConfig
	src := sourcesFlags(fs)
	fs.IntVar(&c.N, "n", 100, "distinct probe sources")
	fs.DurationVar(&c.Interval, "interval", 250*time.Millisecond, "probe interval")
	fs.DurationVar(&c.Timeout, "timeout", 2*time.Second, "probe timeout")
	fs.Var(addrPortFlag{&c.Dst}, "dst", "victim address:port")
	fs.DurationVar(&c.Duration, "duration", 0, "hard time bound (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	c.Sources = *src
	return gen.Probes(ctx, c, wire.NewWriter(e.stdout))
}

func init() {
	register(&command{"prefill", "inject silent-bot entries over ctnetlink (short CI scenarios)", runPrefill})
}

func runPrefill(ctx context.Context, e *env, args []string) error {
	fs := newFlags("prefill", e)
	var c gen.PrefillConfig
	src := sourcesFlags(fs)
	fs.IntVar(&c.N, "n", 0, "sources")
	fs.IntVar(&c.PerSource, "per-source", 0, "entries per source")
	fs.Var(addrPortFlag{&c.Dst}, "dst", "victim address:port")
	fs.DurationVar(&c.Duration, "duration", 0, "hard time bound (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	c.Sources = *src
	return gen.Prefill(ctx, c, wire.NewWriter(e.stdout))
}
