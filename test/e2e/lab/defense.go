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
}

// DefenseNames lists the defenses the runner knows.
var DefenseNames = []string{"none", "baseline", "ctguard"}

// NewDefense returns the named defense for a scenario. "ctguard" needs a
// ctguard binary with a `run` command (issue 6); until that exists it
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
			Note:   fmt.Sprintf("brief's method, threshold 30, every %s", every),
		}, nil
	case "ctguard":
		if err := ctguardAvailable(ctx, ctguardBin); err != nil {
			return Defense{Name: name}, err
		}
		bin, err := filepath.Abs(ctguardBin)
		if err != nil {
			return Defense{Name: name}, err
		}
		return Defense{
			Name:     name,
			Proc:     &Proc{Name: "ctguard", Role: topo.Victim, Args: []string{"run"}},
			Bin:      bin,
			NFTTable: "inet ctguard",
			Native:   true,
			Note:     "ctguard run, built-in defaults",
			Prepare:  ctguardConfig,
		}, nil
	}
	return Defense{}, fmt.Errorf("unknown defense %q (have %v)", name, DefenseNames)
}

// ctguardConfig writes a config that changes only where the daemon keeps
// its state and control socket; everything else stays at the defaults.
func ctguardConfig(dir string) ([]string, error) {
	path := filepath.Join(dir, "ctguard.toml")
	// Debug logging: one line per cycle in the run's log (it changes no decision).
	cfg := fmt.Sprintf("[daemon]\nstate_dir = %q\nsocket = %q\n\n[log]\nlevel = \"debug\"\n", filepath.Join(dir, "state"), filepath.Join(dir, "ctguard.sock"))
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
		return fmt.Errorf("%w: %s has no working `run` command yet (issue 6): %v", ErrUnavailable, bin, err)
	}
	return nil
}
