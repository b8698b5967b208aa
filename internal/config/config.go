// Package config reads ctguard's one configuration file (TOML). Every key
// has a built-in default, so no file is needed; a file overrides any of
// them. Unknown keys and bad values are errors that name the file, the key
// and the value: a typo must never silently fall back to a default.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/ctguard/ctguard/internal/crowdsec"
	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/priority"
)

// Config is the whole file.
type Config struct {
	Daemon   Daemon          `toml:"daemon"`
	Snapshot Snapshot        `toml:"snapshot"`
	Policy   policy.Config   `toml:"policy"`
	Allow    Allow           `toml:"allow"`
	Enforce  Enforce         `toml:"enforce"`
	CrowdSec crowdsec.Config `toml:"crowdsec"`
	Metrics  Metrics         `toml:"metrics"`
	Log      Log             `toml:"log"`
}

// Daemon is how the loop runs.
type Daemon struct {
	// Poll is how often the entry count is read (cheap) between scans.
	Poll time.Duration `toml:"poll"`
	// Interval is the full-scan interval per pressure level (calm,
	// elevated, high, critical): long when calm, short under pressure.
	Interval [policy.NumPressures]time.Duration `toml:"interval"`
	// ScanOnGrowth starts a scan early when the count grew by this many
	// entries since the last scan.
	ScanOnGrowth int    `toml:"scan_on_growth"`
	DryRun       bool   `toml:"dry_run"`
	StateDir     string `toml:"state_dir"`
	Socket       string `toml:"socket"`
	Reader       string `toml:"reader"`
	Procfs       string `toml:"procfs"`
	// Sockets lists TCP sockets each scan for the orphan signal.
	Sockets bool `toml:"sockets"`
	// ValveMaxDelete bounds the entries one valve run may delete.
	ValveMaxDelete int `toml:"valve_max_delete"`
	// CloseSockets closes the host's TCP sockets of the peers a ban
	// covers (sock_diag destroy), so the service is freed, not only the
	// table.
	CloseSockets bool `toml:"close_sockets"`
	// WatchListeners reads the listening sockets' accept queues at every
	// poll; while one is full, scans run at the critical interval.
	WatchListeners bool `toml:"watch_listeners"`
	// Nice is the CPU priority `run` raises itself to at start (-20 to
	// 19, lower runs first); a priority already higher is kept.
	Nice int `toml:"nice"`
}

// Snapshot is how entries are classified and grouped.
type Snapshot struct {
	IdleThreshold time.Duration `toml:"idle_threshold"`
	V4Prefix      int           `toml:"v4_prefix"`
	V6Prefix      int           `toml:"v6_prefix"`
}

// Allow is the configured part of the allowlist (loopback, local
// addresses, gateways, resolvers and SSH peers are always in it).
type Allow struct {
	Addresses  []string      `toml:"addresses"` // addresses and CIDRs
	SSHPorts   []int         `toml:"ssh_ports"`
	ResolvConf string        `toml:"resolv_conf"`
	Refresh    time.Duration `toml:"refresh"`
}

// Enforce is where bans are enforced.
type Enforce struct {
	// Backend is the firewall: "auto" (nftables when the kernel has what
	// ctguard needs, else ipset + iptables), "nftables" or "ipset".
	Backend string `toml:"backend"`
	// ExportSet names an existing ipset (with timeout support) that the
	// host's own firewall uses; every ban is added to it too. "" exports
	// nothing.
	ExportSet string `toml:"export_set"`
}

// Metrics is the optional Prometheus endpoint.
type Metrics struct {
	// Listen is host:port; empty turns the endpoint off. Anything but a
	// loopback address must be asked for explicitly with Public.
	Listen string `toml:"listen"`
	Public bool   `toml:"public"`
}

// Log is the log format and level.
type Log struct {
	Format string `toml:"format"` // text or json
	Level  string `toml:"level"`  // debug, info, warn, error
}

// DefaultNice is the daemon's CPU priority: ahead of the service it
// guards, whose load under attack would otherwise slow the scans (see
// package priority), and behind the kernel's own threads at -20.
const DefaultNice = -10

// Default is the built-in configuration.
func Default() Config {
	return Config{
		Daemon: Daemon{
			Poll:           time.Second,
			Interval:       [policy.NumPressures]time.Duration{30 * time.Second, 5 * time.Second, 2 * time.Second, time.Second},
			ScanOnGrowth:   200,
			StateDir:       "/var/lib/ctguard",
			Socket:         "/run/ctguard/ctguard.sock",
			Reader:         "auto",
			Procfs:         "/proc",
			Sockets:        true,
			ValveMaxDelete: 50000,
			CloseSockets:   true,
			WatchListeners: true,
			Nice:           DefaultNice,
		},
		Snapshot: Snapshot{IdleThreshold: 60 * time.Second, V4Prefix: 24, V6Prefix: 64},
		Policy:   policy.Default(),
		Allow:    Allow{SSHPorts: []int{22}, ResolvConf: "/etc/resolv.conf", Refresh: 30 * time.Second},
		Enforce:  Enforce{Backend: "auto"},
		CrowdSec: crowdsec.Default(),
		Log:      Log{Format: "text", Level: "info"},
	}
}

// Load reads path over the defaults; an empty path gives the defaults.
func Load(path string) (Config, error) {
	c := Default()
	if path == "" {
		return c, c.Validate()
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	return parse(path, b)
}

// parse decodes a config file's bytes over the defaults and validates it;
// path only names the file in errors.
func parse(path string, b []byte) (Config, error) {
	c := Default()
	md, err := toml.Decode(string(b), &c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if pe.LastKey != "" {
				return c, fmt.Errorf("config %s: line %d: %s: %s", path, pe.Position.Line, pe.LastKey, pe.Message)
			}
			return c, fmt.Errorf("config %s: line %d: %s", path, pe.Position.Line, pe.Message)
		}
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return c, fmt.Errorf("config %s: unknown key %s", path, strings.Join(keys, ", "))
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Validate reports every bad value, each naming its key.
func (c *Config) Validate() error {
	var errs []error
	d := c.Daemon
	if d.Poll < 100*time.Millisecond || d.Poll > time.Minute {
		errs = append(errs, fmt.Errorf("daemon.poll = %v: want 100ms to 1m", d.Poll))
	}
	for i, iv := range d.Interval {
		if iv < d.Poll || iv > time.Hour {
			errs = append(errs, fmt.Errorf("daemon.interval[%d] (%s) = %v: want daemon.poll (%v) to 1h", i, policy.Pressure(i), iv, d.Poll))
		}
		if i > 0 && iv > d.Interval[i-1] {
			errs = append(errs, fmt.Errorf("daemon.interval = %v: want it to shorten (not grow) with pressure", d.Interval))
		}
	}
	if d.ScanOnGrowth < 1 {
		errs = append(errs, fmt.Errorf("daemon.scan_on_growth = %d: want >= 1", d.ScanOnGrowth))
	}
	switch d.Reader {
	case "auto", "netlink", "proc":
	default:
		errs = append(errs, fmt.Errorf("daemon.reader = %q: want auto, netlink or proc", d.Reader))
	}
	if d.StateDir == "" || d.Socket == "" || d.Procfs == "" {
		errs = append(errs, fmt.Errorf("daemon.state_dir, daemon.socket and daemon.procfs must not be empty"))
	}
	if d.Nice < priority.Min || d.Nice > priority.Max {
		errs = append(errs, fmt.Errorf("daemon.nice = %d: want %d to %d", d.Nice, priority.Min, priority.Max))
	}
	if d.ValveMaxDelete < 0 {
		errs = append(errs, fmt.Errorf("daemon.valve_max_delete = %d: want >= 0", d.ValveMaxDelete))
	}
	s := c.Snapshot
	if s.IdleThreshold < time.Second || s.IdleThreshold > 120*time.Hour {
		errs = append(errs, fmt.Errorf("snapshot.idle_threshold = %v: want 1s to 120h", s.IdleThreshold))
	}
	if s.V4Prefix < 8 || s.V4Prefix > 32 {
		errs = append(errs, fmt.Errorf("snapshot.v4_prefix = %d: want 8 to 32", s.V4Prefix))
	}
	if s.V6Prefix < 16 || s.V6Prefix > 128 {
		errs = append(errs, fmt.Errorf("snapshot.v6_prefix = %d: want 16 to 128", s.V6Prefix))
	}
	if err := c.Policy.Validate(); err != nil {
		for _, e := range unjoin(err) {
			errs = append(errs, fmt.Errorf("policy.%w", e))
		}
	}
	if _, err := c.AllowPrefixes(); err != nil {
		errs = append(errs, err)
	}
	for _, p := range c.Allow.SSHPorts {
		if p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("allow.ssh_ports: %d is not a port", p))
		}
	}
	if c.Allow.Refresh < time.Second {
		errs = append(errs, fmt.Errorf("allow.refresh = %v: want >= 1s", c.Allow.Refresh))
	}
	if err := c.CrowdSec.Validate(); err != nil {
		for _, e := range unjoin(err) {
			errs = append(errs, fmt.Errorf("crowdsec.%w", e))
		}
	}
	switch c.Enforce.Backend {
	case "auto", "nftables", "ipset":
	default:
		errs = append(errs, fmt.Errorf("enforce.backend = %q: want auto, nftables or ipset", c.Enforce.Backend))
	}
	if n := len(c.Enforce.ExportSet); n > 31 || strings.ContainsAny(c.Enforce.ExportSet, " \t\n") {
		errs = append(errs, fmt.Errorf("enforce.export_set = %q: want an ipset name (1 to 31 characters, no spaces)", c.Enforce.ExportSet))
	}
	if m := c.Metrics.Listen; m != "" {
		host, port, err := net.SplitHostPort(m)
		a, aerr := netip.ParseAddr(host)
		switch {
		case err != nil || port == "":
			errs = append(errs, fmt.Errorf("metrics.listen = %q: want host:port", m))
		case aerr != nil && host != "localhost":
			errs = append(errs, fmt.Errorf("metrics.listen = %q: want an IP address or localhost", m))
		case host != "localhost" && !a.IsLoopback() && !c.Metrics.Public:
			errs = append(errs, fmt.Errorf("metrics.listen = %q is not a loopback address: set metrics.public = true to expose it", m))
		}
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log.format = %q: want text or json", c.Log.Format))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level = %q: want debug, info, warn or error", c.Log.Level))
	}
	return errors.Join(errs...)
}

// unjoin lists the errors inside an errors.Join (or err itself).
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// AllowPrefixes parses allow.addresses.
func (c *Config) AllowPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range c.Allow.Addresses {
		var p netip.Prefix
		var err error
		if strings.Contains(s, "/") {
			p, err = netip.ParsePrefix(s)
		} else {
			var a netip.Addr
			a, err = netip.ParseAddr(s)
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if err != nil {
			return nil, fmt.Errorf("allow.addresses: %q is not an address or CIDR", s)
		}
		if p.Masked() != p {
			// As on the command line: "192.0.2.1/24" is more often a typo
			// than a wish to allow 256 addresses.
			return nil, fmt.Errorf("allow.addresses: %q has host bits set; the network is %s (or allow the address %s alone)", s, p.Masked(), p.Addr())
		}
		out = append(out, p)
	}
	return out, nil
}
