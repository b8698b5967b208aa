package tune

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ctguard/ctguard/internal/host"
)

// LiveRules as Roots.Rules reads the running firewall: iptables-save,
// ip6tables-save and nft list ruleset (each skipped when not installed).
const LiveRules = "live"

// The files a Roots.Rules directory may hold, each the output of the
// command of the same name (nft: nft list ruleset). Each is optional.
var ruleFiles = []struct {
	file string
	argv []string
}{
	// Without -t: only the tables that exist are printed, so reading never
	// loads a table module (iptables-save -t nat could load iptable_nat).
	{"iptables-save", []string{"iptables-save"}},
	{"ip6tables-save", []string{"ip6tables-save"}},
	{"nft", []string{"nft", "list", "ruleset"}},
}

// NAT floor: a NAT'ed connection (Docker's published ports and MASQUERADE,
// Kubernetes services) whose entry expires is broken, not picked up again:
// its next packet finds no translation. Idle connections that stay open rely
// on TCP keepalive, whose first probe goes out after tcp_keepalive_time, 2 h
// by default in every network namespace (containers' included, whatever the
// host's own value), and whose probes then run 9 x 75 s: 7875 s, rounded up
// to 10 minutes.
const (
	defaultKeepaliveTime   = 7200
	defaultKeepaliveIntvl  = 75
	defaultKeepaliveProbes = 9
	// NATFloor is the shortest established timeout tune advises on a host
	// that NATs (--nat-floor overrides it).
	NATFloor = (defaultKeepaliveTime + defaultKeepaliveIntvl*defaultKeepaliveProbes + 599) / 600 * 600
)

// maxNATEvidence bounds the rule lines kept as evidence.
const maxNATEvidence = 5

// readRules reads the firewall's rule sets (saved files, or the live
// commands with r.Rules == LiveRules): the NAT rules found go to h.NAT, the
// chains of kube-proxy and Docker to h.Agents.
func readRules(r Roots, h *Host) {
	if r.Rules == "" {
		return
	}
	for _, rf := range ruleFiles {
		var data []byte
		var err error
		src := rf.file
		if r.Rules == LiveRules {
			data, err = runRules(rf.argv)
			src = strings.Join(rf.argv, " ")
			if errors.Is(err, exec.ErrNotFound) {
				continue
			}
		} else {
			data, err = host.ReadSmall(filepath.Join(r.Rules, rf.file))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
		}
		if err != nil {
			h.Notes = append(h.Notes, fmt.Sprintf("firewall rules unreadable (%s: %v): NAT rules and kube-proxy/Docker chains not checked there", src, errShort(err)))
			continue
		}
		nat, agents := ParseRules(src, string(data))
		for _, n := range nat {
			if len(h.NAT) < maxNATEvidence {
				h.NAT = append(h.NAT, n)
			}
		}
		for _, a := range agents {
			h.addAgent(a.Name, a.Evidence)
		}
	}
}

func runRules(argv []string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The sbin directories are often missing from a user's PATH.
	path, err := exec.LookPath(argv[0])
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if err == nil {
			break
		}
		if p, e := exec.LookPath(filepath.Join(dir, argv[0])); e == nil {
			path, err = p, nil
		}
	}
	if err != nil {
		return nil, exec.ErrNotFound
	}
	cmd := exec.CommandContext(ctx, path, argv[1:]...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	out, err := cmd.Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
	}
	return out, err
}

// ParseRules finds address translation and the chains of container
// agents in iptables-save or nft list ruleset output: nat lists the rules
// that translate (MASQUERADE, SNAT, DNAT, REDIRECT; nft masquerade, snat,
// dnat, redirect), as "<src>: <rule>"; agents are kube-proxy (KUBE-SERVICES
// or KUBE-NODEPORTS chains, nft table kube-proxy) and docker (DOCKER chain).
func ParseRules(src, data string) (nat []string, agents []Agent) {
	seen := map[string]bool{}
	agent := func(name, ev string) {
		if !seen[name] {
			seen[name] = true
			agents = append(agents, Agent{Name: name, Evidence: ev})
		}
	}
	sc := bufio.NewScanner(strings.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		switch {
		// iptables-save: ":CHAIN POLICY [p:b]" declares a chain.
		case strings.HasPrefix(f[0], ":KUBE-SERVICES") || strings.HasPrefix(f[0], ":KUBE-NODEPORTS"):
			agent("kube-proxy", src+": chain "+f[0][1:])
		case f[0] == ":DOCKER":
			agent("docker", src+": chain DOCKER")
		// nft: "chain NAME {" and "table ip kube-proxy {".
		case f[0] == "chain" && len(f) > 1 && (f[1] == "KUBE-SERVICES" || f[1] == "KUBE-NODEPORTS"):
			agent("kube-proxy", src+": chain "+f[1])
		case f[0] == "chain" && len(f) > 1 && f[1] == "DOCKER":
			agent("docker", src+": chain DOCKER")
		case f[0] == "table" && len(f) > 2 && f[len(f)-2] == "kube-proxy":
			agent("kube-proxy", src+": table "+strings.Join(f[1:len(f)-1], " "))
		}
		if translates(f) {
			nat = append(nat, src+": "+line)
		}
	}
	return nat, agents
}

// translates reports whether a rule (split into words) rewrites addresses.
func translates(f []string) bool {
	if f[0] == "-A" || f[0] == "-I" { // iptables-save
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "-j" || f[i] == "--jump" {
				switch f[i+1] {
				case "MASQUERADE", "SNAT", "DNAT", "REDIRECT":
					return true
				}
			}
		}
		return false
	}
	if strings.HasPrefix(f[0], ":") || f[0] == "*" || f[0] == "COMMIT" {
		return false
	}
	for i, w := range f { // nft statements
		switch w {
		case "masquerade", "redirect":
			return true
		case "snat", "dnat":
			// "snat to ...", "dnat ip to ...", not "ct status dnat".
			if i == 0 || f[i-1] != "status" {
				return i+1 < len(f) && (f[i+1] == "to" || f[i+1] == "ip" || f[i+1] == "ip6")
			}
		}
	}
	return false
}

// addAgent adds an agent unless one of that name is known already.
func (h *Host) addAgent(name, ev string) {
	for _, a := range h.Agents {
		if a.Name == name {
			return
		}
	}
	h.Agents = append(h.Agents, Agent{Name: name, Evidence: ev})
}

// HasAgent reports whether the named agent was found.
func (h *Host) HasAgent(name string) bool {
	for _, a := range h.Agents {
		if a.Name == name {
			return true
		}
	}
	return false
}

// natEvidence says why the host counts as NAT'ing ("" when it does not):
// translation rules, DNAT'ed or SNAT'ed entries in the table, or an agent
// that NATs (kube-proxy services, dockerd's published ports and MASQUERADE).
func natEvidence(h *Host, obs *Observation) string {
	switch {
	case len(h.NAT) > 0:
		return "NAT rule " + h.NAT[0]
	case obs != nil && obs.NATed > 0:
		return fmt.Sprintf("%d ESTABLISHED entries in the table have their address translated", obs.NATed)
	}
	for _, a := range h.Agents {
		if a.Name == "kube-proxy" || a.Name == "docker" {
			return a.Name + " (" + a.Evidence + ")"
		}
	}
	return ""
}
