package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"strconv"
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
	register(&command{"keepalive", "keep-alive bots: rotating sources, every connection held open and pinged", runKeepAlive})
	register(&command{"operator", "the server's operator: one ssh session, a command through it every second", runOperator})
	register(&command{"preauth", "hold a TCP connection to sshd open without authenticating", runPreauth})
	register(&command{"monitor", "sample the namespace's conntrack table every 250 ms", runMonitor})
	register(&command{"baseline", "the cron-script method: ban sources with more than 30 entries", runBaseline})
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
	ports := fs.String("tcp-ports", "22,80,443", "TCP ports to serve (comma-separated)")
	maxConns := fs.Int("max-conns", 200000, "accepted connections kept at once (all processes together)")
	procs := fs.Int("procs", 1, "processes sharing the TCP ports (SO_REUSEPORT); 0: as many as --max-conns needs under the file limit")
	worker := fs.Bool("worker", false, "a helper process of a multi-process server (set by the parent)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := needDuration(*d); err != nil {
		return err
	}
	var tcp []int
	for _, p := range strings.Split(*ports, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 || n > 65535 {
			return usagef("--tcp-ports: bad port %q", p)
		}
		tcp = append(tcp, n)
	}
	if *maxConns < 1 || *procs < 0 || *procs > 64 {
		return usagef("--max-conns must be positive and --procs 0..64")
	}
	cfg := victim.Config{DeferSeconds: *deferSec, TCPPorts: tcp, MaxConns: *maxConns}
	lim, err := victim.RaiseNoFile(1 << 20)
	if err != nil {
		return err
	}
	if *procs == 0 {
		// One process holds at most its file limit: RLIMIT_NOFILE's hard
		// limit can only be raised with CAP_SYS_RESOURCE.
		*procs = min(gen.ShardsFor(*maxConns, int(lim)-1024), 64)
	}
	if *procs > 1 {
		cfg.ReusePort = true
		cfg.MaxConns = (*maxConns + *procs - 1) / *procs
		if *worker {
			cfg.UDPPorts = []int{} // the parent answers UDP
		}
	}
	srv, err := victim.Start(cfg, e.log)
	if err != nil {
		return err
	}
	defer srv.Close()
	w := wire.NewWriter(e.stdout)
	ctx, cancel := context.WithTimeout(ctx, *d)
	defer cancel()
	var kids *gen.Children
	if *procs > 1 && !*worker {
		e.log.Info("server: one process cannot hold every connection; running helpers", "procs", *procs, "max_conns_each", srv.MaxConns())
		kids, err = gen.SpawnChildren(ctx, *procs-1, func(int) []string {
			return append(append([]string{"server"}, args...), "--worker", "--procs", strconv.Itoa(*procs))
		})
		if err != nil {
			return err
		}
		if err := kids.WaitReady(ctx, 10*time.Second); err != nil {
			return err
		}
	}
	_ = w.Write(wire.Record{Kind: "ready"})
	<-ctx.Done()
	if kids != nil {
		kids.Drain()
	}
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
	var watch []netip.AddrPort
	fs.Func("watch", "count TCP entries from ADDR to PORT (ADDR:PORT, repeatable)", func(v string) error {
		a, err := netip.ParseAddrPort(v)
		if err != nil {
			return err
		}
		watch = append(watch, a)
		return nil
	})
	we := fs.Duration("watch-every", 500*time.Millisecond, "watch interval")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := needDuration(*d); err != nil {
		return err
	}
	return monitor.Run(ctx, monitor.Config{Interval: *iv, StatesEvery: *se, Duration: *d, IPSets: sets, NFTTable: *nft,
		AttackRanges: topo.AttackRanges, Watch: watch, WatchEvery: *we}, wire.NewWriter(e.stdout), e.log)
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
	fs.BoolVar(&c.HTTP, "http", false, "HTTP/1.1 GET / that must answer 200 (a real web server)")
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
	fs.IntVar(&c.Users, "users", 60, "live users per gateway (with --users-start: at the end of the ramp)")
	fs.IntVar(&c.UsersStart, "users-start", 0, "grow each gateway from this many users to --users (0: no ramp)")
	fs.DurationVar(&c.RampOver, "ramp", 0, "time over which users grow to --users (0: 90% of the duration)")
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
	if err := c.Validate(); err != nil {
		return usagef("%v", err)
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
	fs.BoolVar(&c.HTTP, "http", false, "an HTTP/1.1 GET / that must answer 200 (a real web server)")
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
	fs.BoolVar(&c.Forwarded, "forwarded", false, "forwarded entries: neither end (sources, dst) may be a local address")
	fs.Var(addrPortFlag{&c.Dst}, "dst", "victim address:port (with --forwarded: a non-local address:port)")
	fs.Var(addrPortFlag{&c.ReplySrc}, "reply-src", "DNAT'ed entries: the address:port the replies come from (a container's published port)")
	fs.DurationVar(&c.Idle, "idle", 0, "entries silent this long already (0: fresh)")
	fs.DurationVar(&c.Duration, "duration", 0, "hard time bound (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	c.Sources = *src
	return gen.Prefill(ctx, c, wire.NewWriter(e.stdout))
}

func runKeepAlive(ctx context.Context, e *env, args []string) error {
	fs := newFlags("keepalive", e)
	var c gen.KeepAliveConfig
	src := sourcesFlags(fs)
	fs.IntVar(&c.N, "n", 0, "sources")
	fs.IntVar(&c.PerSource, "per-source", 0, "connections per source")
	fs.IntVar(&c.Active, "active", 0, "sources active at a time")
	fs.Float64Var(&c.Rate, "rate", 0, "new connections per second")
	fs.IntVar(&c.Workers, "workers", 0, "connects in flight at most (0: 16384)")
	fs.DurationVar(&c.Interval, "interval", 20*time.Second, "keep-alive line interval per connection")
	fs.Var(addrPortFlag{&c.Dst}, "dst", "victim address:port")
	fs.DurationVar(&c.Duration, "duration", 0, "hard time bound (required); every connection is closed then")
	shard := fs.Int("shard", 0, "this process's shard (set by the parent)")
	shards := fs.Int("shards", 0, "processes the attack runs as (0: as many as the file limit needs)")
	if err := parse(fs, args); err != nil {
		return err
	}
	c.Sources = *src
	if err := c.Validate(); err != nil {
		return usagef("%v", err)
	}
	w := wire.NewWriter(e.stdout)
	if *shards == 0 {
		k, workers, err := gen.KeepAlivePlan(&c)
		if err != nil {
			return err
		}
		if k > 1 {
			e.log.Info("keepalive: one process cannot hold every connection; running shards", "shards", k, "workers_each", workers)
			kids, err := gen.SpawnChildren(ctx, k, func(i int) []string {
				return append(append([]string{"keepalive"}, args...), "--shard", strconv.Itoa(i), "--shards", strconv.Itoa(k),
					"--workers", strconv.Itoa(workers))
			})
			if err != nil {
				return err
			}
			return kids.Supervise("keepalive", w)
		}
		*shards = 1
	}
	if *shard < 0 || *shard >= *shards {
		return usagef("--shard %d of %d", *shard, *shards)
	}
	return gen.KeepAlive(ctx, c.Shard(*shard, *shards), w)
}

type addrFlag struct{ a *netip.Addr }

func (f addrFlag) String() string {
	if f.a == nil || !f.a.IsValid() {
		return ""
	}
	return f.a.String()
}
func (f addrFlag) Set(s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return err
	}
	*f.a = a
	return nil
}

func runOperator(ctx context.Context, e *env, args []string) error {
	fs := newFlags("operator", e)
	var c gen.OperatorConfig
	fs.StringVar(&c.SSH, "ssh", "ssh", "ssh client")
	fs.StringVar(&c.Key, "key", "", "private key file")
	fs.Var(addrFlag{&c.Bind}, "bind", "local address of the session (AnyIP-routed in this namespace)")
	fs.Var(addrFlag{&c.Host}, "host", "sshd address")
	fs.StringVar(&c.User, "user", "root", "remote user")
	fs.DurationVar(&c.Every, "every", time.Second, "command interval")
	fs.DurationVar(&c.Timeout, "timeout", 2*time.Second, "a command is ok if answered within this")
	fs.DurationVar(&c.Duration, "duration", 0, "hard time bound (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := needDuration(c.Duration); err != nil {
		return err
	}
	return gen.Operator(ctx, c, wire.NewWriter(e.stdout))
}

func runPreauth(ctx context.Context, e *env, args []string) error {
	fs := newFlags("preauth", e)
	var c gen.PreauthConfig
	fs.Var(addrFlag{&c.Src}, "src", "source address (AnyIP-routed in this namespace)")
	fs.Var(addrPortFlag{&c.Dst}, "dst", "sshd address:port")
	fs.BoolVar(&c.Banner, "banner", true, "send an SSH version banner (then nothing)")
	fs.DurationVar(&c.Duration, "duration", 0, "hard time bound (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := needDuration(c.Duration); err != nil {
		return err
	}
	return gen.Preauth(ctx, c, wire.NewWriter(e.stdout))
}
