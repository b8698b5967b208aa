package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/test/e2e/baseline"
	"github.com/ctguard/ctguard/test/e2e/topo"
)

// ErrUnavailable marks a defense that cannot run here (yet).
var ErrUnavailable = errors.New("defense unavailable")

// Defense is what runs in the victim to protect it, plus where the monitor
// finds its bans.
type Defense struct {
	Name     string
	Proc     *Proc  // nil: nothing runs
	Bin      string // binary for Proc; "" means the lab binary
	IPSets   []string
	NFTTable string // nftables table whose sets are the bans ("inet ctguard")
	Note     string // how it was run, for the results table
	// Native marks a Proc that is not a ctglab role: it gets no --duration
	// (the runner stops it), its stdout is a log, not wire records, and it
	// is ready once NFTTable exists in the victim.
	Native bool
	// Prepare, if set, gets a fresh private directory and returns extra
	// arguments for Proc (ctguard: a config with its state and socket there,
	// so the daemon in the victim never touches the host's /var/lib/ctguard).
	Prepare func(dir string) ([]string, error)
	// Ruleset, if set, is loaded into the victim (nft -f) before traffic
	// starts: a defense that is only kernel rules.
	Ruleset string
	// Firewall is the victim's stateful firewall for this defense (""
	// is the lab's nftables ruleset).
	Firewall topo.Firewall
	// Env, if set, gets the directory Prepare got and returns extra
	// environment variables for a Native Proc (ctguard-ipset: a PATH that
	// finds the legacy iptables tools under their plain names).
	Env func(dir string) []string
	// LAPI (the fleet scenario's ctguard-fleet) runs CrowdSec's Local API
	// in the router and links each victim's ctguard to it, push and pull.
	LAPI bool
}

// MeterLimit is the per-source limit of the "meter" defense: the
// cron-script method's threshold, and a common `ct count` value in
// published nft configs.
const MeterLimit = 30

// meterRuleset is the in-kernel `ct count` meter: new
// connections from a source that already has MeterLimit live ones are
// dropped, in the input hook (ct count needs conntrack). It keeps no
// memory: a source under the limit is never touched, and nothing it holds
// is ever removed.
var meterRuleset = fmt.Sprintf(`table inet ctmeter {
	set m4 { type ipv4_addr; size 65535; flags dynamic; }
	set m6 { type ipv6_addr; size 65535; flags dynamic; }
	chain input {
		type filter hook input priority filter; policy accept;
		meta nfproto ipv4 ct state new add @m4 { ip saddr ct count over %[1]d } counter drop
		meta nfproto ipv6 ct state new add @m6 { ip6 saddr ct count over %[1]d } counter drop
	}
}
`, MeterLimit)

// DefenseNames lists the defenses every scenario runs under.
var DefenseNames = []string{"none", "baseline", "meter", "ctguard"}

// ApacheDefenses are the defenses the Apache variants run under: none,
// ctguard with socket closing off (a ban drops and purges, but the
// service keeps the banned peers' connections), ctguard without the watch
// on the accept queues (scans at the table's pace), and ctguard on its
// defaults.
var ApacheDefenses = []string{"none", "ctguard-noclose", "ctguard-nowatch", "ctguard"}

// OptionalDefenses run only when asked for by name (ctglab results
// --defenses), under any scenario but the Apache variants: ctguard-ipset,
// ctguard on its ipset + iptables backend on a victim whose firewall is
// iptables-legacy.
var OptionalDefenses = []string{"ctguard-ipset"}

// DefensesFor is the defenses sc runs under.
func DefensesFor(sc Scenario) []string {
	switch {
	case sc.Fleet:
		return FleetDefenses
	case sc.Apache:
		return ApacheDefenses
	}
	return DefenseNames
}

// DefensesAsked is the defenses sc runs under when the user asked for
// some by name: those of DefensesFor(sc) asked for, then the optional
// ones asked for that apply to sc. No names asked is DefensesFor(sc).
func DefensesAsked(sc Scenario, asked []string) []string {
	if len(asked) == 0 {
		return DefensesFor(sc)
	}
	var out []string
	for _, d := range DefensesFor(sc) {
		if slices.Contains(asked, d) {
			out = append(out, d)
		}
	}
	if sc.Apache || sc.Fleet {
		return out
	}
	for _, d := range OptionalDefenses {
		if slices.Contains(asked, d) {
			out = append(out, d)
		}
	}
	return out
}

// NewDefense returns the named defense for a scenario. "ctguard" needs a
// ctguard binary with a `run` command; without one it
// returns ErrUnavailable rather than pretending.
func NewDefense(ctx context.Context, name string, sc Scenario, ctguardBin string) (Defense, error) {
	switch name {
	case "none":
		return Defense{Name: name, Note: "no defense"}, nil
	case "baseline":
		every := sc.BaselineEvery
		if every == 0 {
			every = 5 * time.Second
		}
		return Defense{
			Name:   name,
			Proc:   &Proc{Name: "baseline", Role: topo.Victim, Args: []string{"baseline", "--interval", every.String(), "--threshold", "30"}},
			IPSets: []string{baseline.SetV4, baseline.SetV6},
			Note:   fmt.Sprintf("cron-script method, threshold 30, every %s", every),
		}, nil
	case "meter":
		return Defense{Name: name, Ruleset: meterRuleset,
			Note: fmt.Sprintf("nft ct count meter: new connections over %d live per source dropped (input hook)", MeterLimit)}, nil
	case "ctguard", "ctguard-noclose", "ctguard-nowatch":
		if err := ctguardAvailable(ctx, ctguardBin); err != nil {
			return Defense{Name: name}, err
		}
		bin, err := filepath.Abs(ctguardBin)
		if err != nil {
			return Defense{Name: name}, err
		}
		v := ctguardVariants[name]
		note, extra := v.note, v.extra
		return Defense{
			Name:     name,
			Proc:     &Proc{Name: "ctguard", Role: topo.Victim, Args: []string{"run"}},
			Bin:      bin,
			NFTTable: "inet ctguard",
			Native:   true,
			Note:     note,
			Prepare:  func(dir string) ([]string, error) { return ctguardConfig(dir, extra) },
		}, nil
	case "ctguard-ipset":
		return ctguardIPSet(ctx, ctguardBin)
	case "ctguard-isolated", "ctguard-fleet":
		if !sc.Fleet {
			return Defense{}, fmt.Errorf("defense %s is for the fleet scenario only", name)
		}
		return fleetDefense(ctx, name, ctguardBin)
	}
	return Defense{}, fmt.Errorf("unknown defense %q (have %v, %v, %v, %v)", name, DefenseNames, ApacheDefenses[1:3], OptionalDefenses, FleetDefenses)
}

// ctguardIPSet is ctguard run with enforce.backend = "ipset" on a victim
// whose firewall is iptables-legacy. ctguard calls the iptables tools by
// their plain names (iptables-restore, ip6tables-save, ...), which on
// Debian 12 are the nft flavour: like an operator of a legacy host, the
// lab puts the legacy tools first on ctguard's PATH under those names
// (symlinks in a private directory; the host's alternatives stay as they
// are).
func ctguardIPSet(ctx context.Context, ctguardBin string) (Defense, error) {
	const name = "ctguard-ipset"
	if err := ctguardAvailable(ctx, ctguardBin); err != nil {
		return Defense{Name: name}, err
	}
	bin, err := filepath.Abs(ctguardBin)
	if err != nil {
		return Defense{Name: name}, err
	}
	tools, err := legacyTools()
	if err != nil {
		return Defense{Name: name}, err
	}
	return Defense{
		Name:     name,
		Proc:     &Proc{Name: "ctguard", Role: topo.Victim, Args: []string{"run"}},
		Bin:      bin,
		IPSets:   CtguardIPSets(),
		Native:   true,
		Firewall: topo.FirewallIPTablesLegacy,
		Note:     "ctguard run, built-in defaults but enforce.backend = \"ipset\"; the victim's firewall is iptables-legacy",
		Prepare: func(dir string) ([]string, error) {
			if err := linkTools(filepath.Join(dir, "bin"), tools); err != nil {
				return nil, err
			}
			return ctguardConfig(dir, "", "[enforce]\nbackend = \"ipset\"\n")
		},
		Env: LegacyPATH,
	}, nil
}

// CtguardIPSets are the names of ctguard's ipsets (enforce.IPSet): full
// and scoped bans of addresses and prefixes, IPv4 and IPv6.
func CtguardIPSets() []string {
	var out []string
	for _, scoped := range []string{"", enforce.IPSetScopedSuffix} {
		for _, kind := range []string{"ban4", "net4", "ban6", "net6"} {
			out = append(out, enforce.IPSetPrefix+kind+scoped)
		}
	}
	return out
}

// legacyToolNames maps the names ctguard calls to the legacy programs.
var legacyToolNames = map[string]string{
	"iptables": "iptables-legacy", "iptables-restore": "iptables-legacy-restore", "iptables-save": "iptables-legacy-save",
	"ip6tables": "ip6tables-legacy", "ip6tables-restore": "ip6tables-legacy-restore", "ip6tables-save": "ip6tables-legacy-save",
}

// legacyTools finds the legacy iptables programs (Debian: package
// iptables), keyed by the plain name they stand in for.
func legacyTools() (map[string]string, error) {
	out := map[string]string{}
	for plain, legacy := range legacyToolNames {
		p, err := exec.LookPath(legacy)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v (install iptables)", ErrUnavailable, legacy, err)
		}
		out[plain] = p
	}
	return out, nil
}

// linkTools makes dir hold a symlink per plain name to its legacy program.
func linkTools(dir string, tools map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("legacy iptables tools: %w", err)
	}
	for plain, target := range tools {
		if err := os.Symlink(target, filepath.Join(dir, plain)); err != nil {
			return fmt.Errorf("legacy iptables tools: %w", err)
		}
	}
	return nil
}

// LegacyPATH is the PATH that finds, under their plain names, the legacy
// iptables tools Prepare linked into dir/bin, then the usual programs.
func LegacyPATH(dir string) []string {
	return []string{"PATH=" + filepath.Join(dir, "bin") + string(os.PathListSeparator) + os.Getenv("PATH")}
}

// ctguardVariants are the ctguard defenses: the defaults, and the Apache
// comparisons that turn one feature off (extra [daemon] keys).
var ctguardVariants = map[string]struct{ note, extra string }{
	"ctguard":         {"ctguard run, built-in defaults", ""},
	"ctguard-noclose": {"ctguard run, built-in defaults but daemon.close_sockets = false", "close_sockets = false\n"},
	"ctguard-nowatch": {"ctguard run, built-in defaults but daemon.watch_listeners = false", "watch_listeners = false\n"},
}

// CtguardConfigFile is the name of the config a ctguard defense's Prepare
// writes in its directory.
const CtguardConfigFile = "ctguard.toml"

// ctguardConfig writes a config that changes only where the daemon keeps
// its state and control socket, plus extra [daemon] keys (the Apache
// comparisons turn one feature off) and extra sections (the ipset
// backend); everything else stays at the defaults.
func ctguardConfig(dir, extra string, sections ...string) ([]string, error) {
	path := filepath.Join(dir, CtguardConfigFile)
	// Debug logging: one line per cycle in the run's log (it changes no decision).
	cfg := fmt.Sprintf("[daemon]\nstate_dir = %q\nsocket = %q\n%s\n[log]\nlevel = \"debug\"\n",
		filepath.Join(dir, "state"), filepath.Join(dir, "ctguard.sock"), extra)
	for _, s := range sections {
		cfg += "\n" + s
	}
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, fmt.Errorf("ctguard config: %w", err)
	}
	return []string{"--config", path}, nil
}

func ctguardAvailable(ctx context.Context, bin string) error {
	if bin == "" {
		return fmt.Errorf("%w: no ctguard binary given", ErrUnavailable)
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%w: %s: %v (run make build)", ErrUnavailable, bin, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := exec.CommandContext(ctx, bin, "run", "-h").Run(); err != nil {
		return fmt.Errorf("%w: %s has no working `run` command: %v", ErrUnavailable, bin, err)
	}
	return nil
}
