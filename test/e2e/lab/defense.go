package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

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

// DefensesFor is the defenses sc runs under.
func DefensesFor(sc Scenario) []string {
	if sc.Apache {
		return ApacheDefenses
	}
	return DefenseNames
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
	}
	return Defense{}, fmt.Errorf("unknown defense %q (have %v, %v)", name, DefenseNames, ApacheDefenses[1:3])
}

// ctguardVariants are the ctguard defenses: the defaults, and the Apache
// comparisons that turn one feature off (extra [daemon] keys).
var ctguardVariants = map[string]struct{ note, extra string }{
	"ctguard":         {"ctguard run, built-in defaults", ""},
	"ctguard-noclose": {"ctguard run, built-in defaults but daemon.close_sockets = false", "close_sockets = false\n"},
	"ctguard-nowatch": {"ctguard run, built-in defaults but daemon.watch_listeners = false", "watch_listeners = false\n"},
}

// ctguardConfig writes a config that changes only where the daemon keeps
// its state and control socket, plus extra [daemon] keys (the Apache
// comparisons turn one feature off); everything else stays at the defaults.
func ctguardConfig(dir, extra string) ([]string, error) {
	path := filepath.Join(dir, "ctguard.toml")
	// Debug logging: one line per cycle in the run's log (it changes no decision).
	cfg := fmt.Sprintf("[daemon]\nstate_dir = %q\nsocket = %q\n%s\n[log]\nlevel = \"debug\"\n",
		filepath.Join(dir, "state"), filepath.Join(dir, "ctguard.sock"), extra)
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
