// Package lab defines the attack scenarios and runs one scenario against one
// defense in a fresh topology: it starts the victim server, the monitor,
// the defense, the legit clients and the attack as separate processes in
// their namespaces, collects their records, and turns them into samples
// (CSV) and a one-line summary.
package lab

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ctguard/ctguard/test/e2e/topo"
)

// Proc is one lab process: a ctglab subcommand run in a namespace.
type Proc struct {
	Name string
	Role string   // namespace role (topo.Victim, topo.Attacker, ...)
	Args []string // ctglab subcommand and flags, without --duration
}

// Scenario is an attack plus the legit background traffic around it.
type Scenario struct {
	Name   string
	Desc   string
	Family int // probe family: 4 or 6
	Attack []Proc
	// Prefill, if set, runs in the victim to completion before the warmup:
	// it injects bot entries over ctnetlink so short runs start near full.
	Prefill *Proc
	// Warmup runs legit traffic (and the defense) before the attack; Attack
	// bounds the attack generators; Tail keeps probing after they stop.
	Warmup, AttackFor, Tail time.Duration
	// BaselineEvery is the interval of the cron-script method: 5 s for fast
	// attacks, 10 s for slow ones.
	BaselineEvery time.Duration
	// Settle starts the Background processes this long before the defense
	// (and the other traffic), so that what they hold is older than the
	// defense's growth window when the attack starts.
	Settle time.Duration
	// StatesEvery is how often the monitor walks the table for state and
	// attack-held counts (default 5 s: a walk of a full table costs up to a
	// second of CPU).
	StatesEvery time.Duration
	// ServerArgs are extra flags for the victim server (--tcp-ports,
	// --max-conns).
	ServerArgs []string
	// Background processes run for the whole scenario next to the usual
	// legit background, started with it: extra legit clients (role Legit:
	// their requests count as the legit clients') and the SSH scenario's
	// operator and pre-auth holder.
	Background []Proc
	// SSHD runs a real OpenSSH server (/usr/sbin/sshd) in the victim on
	// port 22, with a host key and a client key generated for the run (the
	// victim server must then not serve 22: see ServerArgs). "{sshdir}" in
	// any process's arguments is the directory holding them; the client
	// key is {sshdir}/id_ed25519.
	SSHD bool
	// Watch lists ADDR:PORT targets whose TCP entries the monitor counts
	// every 500 ms (Summary.Watch, in this order).
	Watch []string
	// Apache runs a real Apache (Debian's apache2, its default limits) in
	// the victim on ApachePort next to the lab server; the probes are then
	// HTTP requests to it. See ApacheVariant.
	Apache bool
	// Container runs the lab server in a container namespace behind the
	// victim, which DNATs its :443 there (topo.Options.Container); every
	// client still connects to the victim's address, and the victim's
	// table holds the entries.
	Container bool
	// Fleet runs the scenario on two victims behind the router (RunFleet,
	// topo.Options.Fleet): the Attack processes hit victim A; Turn after
	// the attack started they are started again, the same sources, against
	// victim B for the rest of AttackFor. The legit background runs against
	// both victims, and a monitor samples each.
	Fleet bool
	Turn  time.Duration
}

// Total is the scenario's wall-clock length.
func (s Scenario) Total() time.Duration { return s.Warmup + s.AttackFor + s.Tail }

var victim443v4 = topo.VictimV4.String() + ":443"
var victim443v6 = "[" + topo.VictimV6.String() + "]:443"

func itoa(n int) string { return strconv.Itoa(n) }

// botProc is the silent-bot generator's command line.
func botProc(name, src, layout string, nets, n, per, active, rate int, dst string) Proc {
	args := []string{"bots", "--src", src, "--layout", layout, "--n", itoa(n), "--per-source", itoa(per),
		"--active", itoa(active), "--rate", itoa(rate), "--dst", dst}
	if nets > 0 {
		args = append(args, "--nets", itoa(nets))
	}
	return Proc{Name: name, Role: topo.Attacker, Args: args}
}

// prefillProc injects n x per silent-bot entries from src (short runs only).
func prefillProc(src, layout string, nets, n, per int, dst string) *Proc {
	args := []string{"prefill", "--src", src, "--layout", layout, "--n", itoa(n), "--per-source", itoa(per), "--dst", dst}
	if nets > 0 {
		args = append(args, "--nets", itoa(nets))
	}
	return &Proc{Name: "prefill", Role: topo.Victim, Args: args}
}

// dnatPrefill makes a prefill's entries DNAT'ed to the container, as the
// kernel records the live bots' connections to the published port, and
// five minutes silent, as an attack's first entries are when it has been
// running for a while. Fresh ones would look active: behind a DNAT no
// socket of the victim's own says a connection was never served, so only
// their silence tells them from a busy client's.
func dnatPrefill(p *Proc) *Proc {
	p.Args = append(p.Args, "--reply-src", netip.AddrPortFrom(topo.ContainerV4, topo.PublishedPort).String(), "--idle", "5m")
	return p
}

// keepAliveProc is the keep-alive bots' command line.
func keepAliveProc(name, src, layout string, n, per, active, rate int, interval time.Duration, dst string) Proc {
	return Proc{Name: name, Role: topo.Attacker, Args: []string{"keepalive", "--src", src, "--layout", layout,
		"--n", itoa(n), "--per-source", itoa(per), "--active", itoa(active), "--rate", itoa(rate),
		"--interval", interval.String(), "--dst", dst}}
}

// ForwardedPrefill is forwardedPrefill for tests that need another head start.
func ForwardedPrefill(n int) *Proc { return forwardedPrefill(n) }

// forwardedPrefill injects n FORWARDED entries (topo.FwdV4: neither end a
// victim address), ESTABLISHED and ASSURED for five days: they fill the
// table, and no guard attributes them to a remote source.
func forwardedPrefill(n int) *Proc {
	const per = 4000
	sources := (n + per - 1) / per
	return &Proc{Name: "prefill", Role: topo.Victim, Args: []string{"prefill", "--forwarded", "--src", topo.FwdSrcV4.String(),
		"--layout", "seq", "--n", itoa(sources), "--per-source", itoa(per), "--dst", topo.FwdDstV4.String()}}
}

// IsForwardedPrefill says whether p injects forwarded entries only (allowed
// in full-length runs: they are pressure, not attack entries).
func IsForwardedPrefill(p *Proc) bool {
	if p == nil {
		return false
	}
	for _, a := range p.Args {
		if a == "--forwarded" {
			return true
		}
	}
	return false
}

func floodProc(proto string, rate, count int) Proc {
	return Proc{Name: proto + "-flood", Role: topo.Attacker, Args: []string{"flood", "--proto", proto,
		"--src", topo.SpoofV4.String(), "--dst", victim443v4, "--rate", itoa(rate), "--count", itoa(count)}}
}

// Scenarios returns the scenario set. Short versions are for CI: the same
// attacks, but the silent-bot ones start from a table already holding
// 230,000 of the bots' entries (injected over ctnetlink, from other
// addresses of the same attack range), so the live bots fill the rest in
// seconds instead of half a minute.
func Scenarios(short bool) []Scenario {
	warm, tail := 4*time.Second, 8*time.Second
	if short {
		warm, tail = 3*time.Second, 5*time.Second
	}
	pick := func(s, f time.Duration) time.Duration {
		if short {
			return s
		}
		return f
	}
	prefill := func(p *Proc) *Proc {
		if short {
			return p
		}
		return nil
	}
	return []Scenario{
		{
			Name:   "bots-v4",
			Desc:   "silent established bots (the incident's attack): 1500 rotating IPv4 sources x 300 connections, 64 active, up to 30k conn/s",
			Family: 4, Warmup: warm, Tail: tail, AttackFor: pick(15*time.Second, 75*time.Second), BaselineEvery: 5 * time.Second,
			Attack:  []Proc{botProc("bots", topo.BotV4.String(), "seq", 0, 1500, 300, 64, 30000, victim443v4)},
			Prefill: prefill(prefillProc("198.18.64.0/18", "seq", 0, 767, 300, victim443v4)),
		},
		{
			Name:   "bots-v6",
			Desc:   "silent established bots over IPv6: 1500 sources (one /64 each) x 300 connections, 64 active, up to 30k conn/s",
			Family: 6, Warmup: warm, Tail: tail, AttackFor: pick(15*time.Second, 75*time.Second), BaselineEvery: 5 * time.Second,
			Attack:  []Proc{botProc("bots", topo.BotV6.String(), "per64", 0, 1500, 300, 64, 30000, victim443v6)},
			Prefill: prefill(prefillProc("2001:db8:bad:8000::/49", "per64", 0, 767, 300, victim443v6)),
		},
		{
			Name:   "bots-spread",
			Desc:   "the fastest attack, spread out: 1500 rotating IPv4 sources dealt over 256 /24s (about 6 per /24) x 300 silent connections, 64 active, up to 30k conn/s",
			Family: 4, Warmup: warm, Tail: tail, AttackFor: pick(15*time.Second, 75*time.Second), BaselineEvery: 5 * time.Second,
			Attack:  []Proc{botProc("bots", topo.SlowV4.String(), "spread24", 256, 1500, 300, 64, 30000, victim443v4)},
			Prefill: prefill(prefillProc(topo.BotV4.String(), "seq", 0, 767, 300, victim443v4)),
		},
		{
			Name:   "bots-slow",
			Desc:   "silent established bots at 3k conn/s: 1500 sources x 300, 16 active",
			Family: 4, Warmup: warm, Tail: tail, AttackFor: pick(25*time.Second, 100*time.Second), BaselineEvery: 10 * time.Second,
			Attack: []Proc{botProc("bots", topo.BotV4.String(), "seq", 0, 1500, 300, 16, 3000, victim443v4)},
		},
		{
			Name:   "bots-incident",
			Desc:   "the incident's attack at its own rate: bots of 300 silent connections each, 4 active at a time, rotating, 200 new conn/s",
			Family: 4, Warmup: warm, Tail: tail, AttackFor: pick(30*time.Second, 75*time.Second), BaselineEvery: 10 * time.Second,
			StatesEvery: time.Second,
			Attack:      []Proc{botProc("bots", topo.BotV4.String(), "seq", 0, 60, 300, 4, 200, victim443v4)},
		},
		{
			Name:   "bots-incident-v6",
			Desc:   "the incident's attack at its own rate over IPv6: bots of 300 silent connections each (one /64 per bot), 4 active at a time, rotating, 200 new conn/s",
			Family: 6, Warmup: warm, Tail: tail, AttackFor: pick(30*time.Second, 75*time.Second), BaselineEvery: 10 * time.Second,
			StatesEvery: time.Second,
			Attack:      []Proc{botProc("bots", topo.BotV6.String(), "per64", 0, 60, 300, 4, 200, victim443v6)},
		},
		{
			Name:   "crowd-nat",
			Desc:   "no attack: a benign crowd of 4,000 IPv6 and 250 IPv4 clients (short connections, 150 conn/s) next to the NAT gateways; any ban is a false ban",
			Family: 4, Warmup: warm, Tail: tail, AttackFor: pick(20*time.Second, 60*time.Second), BaselineEvery: 5 * time.Second,
			Attack: []Proc{
				{Name: "crowd-big6", Role: topo.Legit, Args: []string{"crowd", "--src", topo.CrowdV6.String(), "--n", "4000", "--rate", "100", "--dst", victim443v6}},
				{Name: "crowd-big4", Role: topo.Legit, Args: []string{"crowd", "--src", topo.CrowdV4.String(), "--n", "250", "--rate", "50", "--dst", victim443v4}},
			},
		},
		{
			Name:   "nat-false-positive",
			Desc:   "a small silent-bot attack (50 sources x 300 connections at 3k conn/s) next to the NAT gateways (60 live users each) and the crowd",
			Family: 4, Warmup: warm, Tail: pick(12*time.Second, 15*time.Second), AttackFor: 6 * time.Second, BaselineEvery: 5 * time.Second,
			Attack: []Proc{botProc("bots", topo.BotV4.String(), "seq", 0, 50, 300, 8, 3000, victim443v4)},
		},
		{
			Name:   "syn-flood",
			Desc:   "spoofed SYN flood, 30k pps from random sources in 198.18.128.0/17",
			Family: 4, Warmup: warm, Tail: tail, AttackFor: pick(15*time.Second, 30*time.Second), BaselineEvery: 5 * time.Second,
			Attack: []Proc{floodProc("syn", 30000, 30000*30)},
		},
		{
			Name:   "udp-flood",
			Desc:   "spoofed UDP flood, 30k pps from random sources in 198.18.128.0/17",
			Family: 4, Warmup: warm, Tail: tail, AttackFor: pick(15*time.Second, 30*time.Second), BaselineEvery: 5 * time.Second,
			Attack: []Proc{floodProc("udp", 30000, 30000*30)},
		},
		{
			Name: "keepalive",
			Desc: "keep-alive bots: 1100 rotating IPv4 sources x 300 connections, 32 active, 5k conn/s; every connection stays open, " +
				"sends a line every 20 s and is answered by the server; next to a carrier-grade NAT (one address, its live users growing by about 7 a second to 1100, started 20 s before the guard)" +
				map[bool]string{true: "; from a table prefilled with 215,000 forwarded entries"}[short],
			Family: 4, Warmup: warm, Tail: tail, AttackFor: pick(20*time.Second, 85*time.Second), BaselineEvery: 5 * time.Second,
			Attack: []Proc{keepAliveProc("keepalive", topo.BotV4.String(), "seq", 1100, 300, 32, KeepAliveRate, 20*time.Second, victim443v4)},
			// Prefilled entries must not look like orphans (a guard would ban
			// them for the wrong reason): forwarded ones, attributed to nobody.
			// The short run's generator makes about 60,000 connections on this
			// machine: 215,000 forwarded entries leave it room to fill the rest.
			Prefill:    prefill(forwardedPrefill(215000)),
			ServerArgs: []string{"--max-conns", "300000", "--procs", "0"},
			Background: []Proc{cgnatProc(short)},
			Settle:     20 * time.Second,
		},
		{
			Name: "ssh-trick",
			Desc: "the SSH trick: X (198.18.7.10) holds a pre-auth connection to a real sshd while it and 9 neighbours of its /24 run 300 silent bot connections each; " +
				"the operator keeps a real SSH session from 198.18.7.200 in the same /24; the table is prefilled with 215,000 forwarded entries (pressure)",
			Family: 4, Warmup: 5 * time.Second, Tail: tail, AttackFor: pick(20*time.Second, 60*time.Second), BaselineEvery: 5 * time.Second,
			Attack:     []Proc{botProc("bots", topo.SSHNetV4.String(), "seq", 0, 10, 300, 10, 600, victim443v4)},
			Prefill:    forwardedPrefill(215000),
			ServerArgs: []string{"--tcp-ports", "80,443"},
			SSHD:       true,
			Background: []Proc{
				{Name: "operator", Role: topo.Attacker, Args: []string{"operator", "--key", "{sshdir}/id_ed25519",
					"--bind", topo.OperatorV4.String(), "--host", topo.VictimV4.String(), "--every", "1s", "--timeout", "2s"}},
				{Name: "preauth", Role: topo.Attacker, Args: []string{"preauth", "--src", topo.SSHTrickX.String(),
					"--dst", topo.VictimV4.String() + ":22"}},
			},
			Watch: []string{topo.SSHTrickX.String() + ":443", topo.SSHTrickX.String() + ":22", topo.OperatorV4.String() + ":22"},
		},
		{
			Name:   "low-and-slow",
			Desc:   "distributed silent bots: 14400 sources in 60 /24s, 28 connections each (under the threshold of 30), 2000 active, up to 15k conn/s",
			Family: 4, Warmup: warm, Tail: tail, AttackFor: pick(15*time.Second, 75*time.Second), BaselineEvery: 10 * time.Second,
			Attack:  []Proc{botProc("low-and-slow", topo.SlowV4.String(), "spread24", 60, 14400, 28, 2000, 15000, victim443v4)},
			Prefill: prefill(prefillProc("198.19.64.0/18", "spread24", 60, 8220, 28, victim443v4)),
		},
		{
			Name: "fleet",
			Desc: fmt.Sprintf("two victims behind one router: silent established bots (as bots-v4: %d rotating IPv4 sources x 300 connections, 64 active, up to 30k conn/s, dealt over %d /24s) attack victim A; %s after, the same sources turn to victim B; "+
				"ctguard runs on both, alone (ctguard-isolated) or sharing its bans through one CrowdSec Local API (ctguard-fleet: push and pull every %s)",
				fleetBots(short), fleetNets(short), pick(13*time.Second, 40*time.Second), FleetPullInterval),
			Family: 4, Warmup: warm, Tail: tail, AttackFor: pick(21*time.Second, 80*time.Second), Turn: pick(13*time.Second, 40*time.Second),
			BaselineEvery: 5 * time.Second, StatesEvery: time.Second,
			Attack: []Proc{botProc("bots", topo.BotV4.String(), "spread24", fleetNets(short), fleetBots(short), 300, 64, 30000, victim443v4)},
			Fleet:  true,
		},
		{
			Name: "container",
			Desc: "silent established bots (as bots-v4: 1500 rotating IPv4 sources x 300 connections, 64 active, up to 30k conn/s) against a published port: " +
				"the victim DNATs its :443 to a container namespace behind it (like Docker's -p 443:443), where the server runs; the probes, crowd and NAT gateways use the published port too",
			Family: 4, Warmup: warm, Tail: tail, AttackFor: pick(15*time.Second, 75*time.Second), BaselineEvery: 5 * time.Second,
			Attack:    []Proc{botProc("bots", topo.BotV4.String(), "seq", 0, 1500, 300, 64, 30000, victim443v4)},
			Prefill:   prefill(dnatPrefill(prefillProc("198.18.64.0/18", "seq", 0, 767, 300, victim443v4))),
			Container: true,
		},
	}
}

// KeepAliveRate is the keep-alive bots' connection rate: what this 2-core
// lab machine sustains while the server answers every connection.
const KeepAliveRate = 5000

// cgnatProc is the carrier-grade NAT: one address whose live users grow
// by about 7 a second in both versions (400 to 1,100 over the full run, 900
// to 1,100 over the short one), so that it always holds more than any bot
// and keeps growing, at the pace of a real one rather than a burst.
func cgnatProc(short bool) Proc {
	start := "400"
	if short {
		start = "900"
	}
	return Proc{Name: "cgnat", Role: topo.Legit, Args: []string{"nat", "--gateways", topo.CGNATV4.String(),
		"--users-start", start, "--users", "1100", "--interval", "10s", "--dst", victim443v4}}
}

// ApacheScenarios are the scenarios that also run against Apache: silent
// bots at full speed and at the incident's rate, v4 and v6, and the flash
// crowd next to the NAT gateways.
var ApacheScenarios = []string{"bots-v4", "bots-v6", "bots-incident", "bots-incident-v6", "crowd-nat"}

// ApacheVariant is sc against a real Apache: named "apache-" + sc.Name, the
// attack (and a crowd that is the scenario's load) sent to Apache's port
// instead of the lab server's, the crowd's requests in real HTTP, no
// prefill, and the probes HTTP GETs to Apache that must answer 200 within 2 s. The rest of
// the legit background (the small crowd, the NAT gateways' long-lived
// sessions) keeps using the lab server: it is the host's other traffic.
func ApacheVariant(sc Scenario, short bool) Scenario {
	out := sc
	if short {
		// A probe lost while the first wave is detected costs 1 % of a
		// 15 s run: 25 s gives the ratio room to mean something.
		out.AttackFor = max(out.AttackFor, 25*time.Second)
	}
	out.Name = "apache-" + sc.Name
	out.Desc = sc.Desc + "; against Apache (Debian's apache2 with its default limits: 150 workers, request header within 20-40 s), the probes are HTTP GETs to it"
	out.Apache = true
	// Apache takes its port from the lab server.
	out.ServerArgs = withoutPort(sc.ServerArgs, ApachePort)
	out.Attack = make([]Proc, len(sc.Attack))
	for i, p := range sc.Attack {
		p.Args = toApache(p.Args)
		if p.Role == topo.Legit && len(p.Args) > 0 && p.Args[0] == "crowd" {
			p.Args = append(p.Args, "--http")
		}
		out.Attack[i] = p
	}
	// No prefill: a short run's head start of injected entries is about the
	// table, and would let a guard ban the bots' whole range before they
	// ever reach Apache. The live bots must meet the service.
	out.Prefill = nil
	return out
}

// withoutPort returns server flags that leave port to another server.
func withoutPort(args []string, port int) []string {
	out := slices.Clone(args)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == "--tcp-ports" {
			var keep []string
			for _, p := range strings.Split(out[i+1], ",") {
				if p != itoa(port) {
					keep = append(keep, p)
				}
			}
			out[i+1] = strings.Join(keep, ",")
			return out
		}
	}
	return append(out, "--tcp-ports", "22,443") // the server's default, less port 80
}

// toApache points the lab server's :443 destinations at Apache's port.
func toApache(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		switch a {
		case victim443v4:
			a = fmt.Sprintf("%s:%d", topo.VictimV4, ApachePort)
		case victim443v6:
			a = fmt.Sprintf("[%s]:%d", topo.VictimV6, ApachePort)
		}
		out[i] = a
	}
	return out
}

// All is every scenario: Scenarios, then the Apache variants.
func All(short bool) []Scenario {
	all := Scenarios(short)
	for _, sc := range all[:len(all):len(all)] {
		if slices.Contains(ApacheScenarios, sc.Name) {
			all = append(all, ApacheVariant(sc, short))
		}
	}
	return all
}

// Find returns the named scenario (an Apache variant too).
func Find(name string, short bool) (Scenario, error) {
	for _, s := range All(short) {
		if s.Name == name {
			return s, nil
		}
	}
	return Scenario{}, fmt.Errorf("unknown scenario %q", name)
}

// legitProcs is the background every scenario has: probes, a benign crowd
// and two NAT gateways with 60 live users each (the cron-script method's
// false-positive case). They run for the whole scenario.
func legitProcs(sc Scenario) []Proc {
	probeSrc, dst := topo.ProbeV4.String(), victim443v4
	if sc.Family == 6 {
		probeSrc, dst = topo.ProbeV6.String(), victim443v6
	}
	probe := []string{"probes", "--src", probeSrc, "--n", "100", "--interval", "250ms", "--timeout", "2s"}
	if sc.Apache {
		probe = append(probe, "--http", "--dst", toApache([]string{dst})[0])
	} else {
		probe = append(probe, "--dst", dst)
	}
	return []Proc{
		{Name: "probes", Role: topo.Legit, Args: probe},
		{Name: "crowd", Role: topo.Legit, Args: []string{"crowd", "--src", topo.CrowdV4.String(), "--n", "250",
			"--rate", "20", "--dst", victim443v4}},
		{Name: "crowd6", Role: topo.Legit, Args: []string{"crowd", "--src", topo.CrowdV6.String(), "--n", "250",
			"--rate", "10", "--dst", victim443v6}},
		{Name: "nat", Role: topo.Legit, Args: []string{"nat", "--gateways", "203.0.113.10,203.0.113.11",
			"--users", "60", "--interval", "3s", "--dst", victim443v4}},
	}
}
