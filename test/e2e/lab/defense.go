package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/ctguard/ctguard/test/e2e/baseline"
	"github.com/ctguard/ctguard/test/e2e/topo"
)

// ErrUnavailable marks a defense that cannot run here (yet).
var ErrUnavailable = errors.New("defense unavailable")

// Defense is what runs in the victim to protect it, plus where the monitor
// finds its bans.
type Defense struct {
	Name   string
	Proc   *Proc  // nil: nothing runs
	Bin    string // binary for Proc; "" means the lab binary
	IPSets []string
	Note   string // how it was run, for the results table
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
		// The daemon exists: wire it in here (issue 6) — its ban sets live in
		// nftables table inet ctguard, which the monitor does not read yet.
		return Defense{Name: name}, fmt.Errorf("%w: the lab does not read ctguard's nftables ban sets yet (issue 6)", ErrUnavailable)
	}
	return Defense{}, fmt.Errorf("unknown defense %q (have %v)", name, DefenseNames)
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
