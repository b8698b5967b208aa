// Package topo builds and tears down the attack lab's network namespaces:
// a victim, a router, an attacker and a legit-clients namespace, joined by
// veth pairs through the router, with AnyIP client ranges and the victim's
// stateful firewall (nftables, or iptables-legacy). Optionally a fifth
// namespace, a container behind the victim, serves the victim's port 443
// through a DNAT rule in the victim, as Docker publishes a port. Or, for
// the fleet scenario, a second victim (victim B) with its own link to the
// router, and an address on the router where CrowdSec's Local API listens
// for both victims.
//
// It must never touch the root namespace: every command runs with
// `ip -n NS` or `ip netns exec NS`, and only namespaces whose names carry
// this run's prefix are ever deleted. Names are recorded in a state file
// before they are created, so `ctglab cleanup` can remove leftovers of a run
// that was killed.
package topo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// NamePrefix starts every namespace name this package creates.
const NamePrefix = "ctglab-"

// Roles of the namespaces.
const (
	Victim   = "victim"
	Router   = "router"
	Attacker = "attacker"
	Legit    = "legit"
	// Container is the optional namespace behind the victim (Options.Container).
	Container = "container"
	// VictimB is the fleet's second victim (Options.Fleet).
	VictimB = "victim-b"
)

// Address plan. Attack and legit ranges never share a /24 (or a /64).
var (
	VictimV4 = netip.MustParseAddr("198.51.100.2")
	VictimV6 = netip.MustParseAddr("2001:db8:ff:1::2")

	BotV4   = netip.MustParsePrefix("198.18.0.0/17")   // silent bots, AnyIP in the attacker
	SpoofV4 = netip.MustParsePrefix("198.18.128.0/17") // spoofed floods: routed to the attacker, not local there
	SlowV4  = netip.MustParsePrefix("198.19.0.0/16")   // distributed low-and-slow, AnyIP in the attacker
	BotV6   = netip.MustParsePrefix("2001:db8:bad::/48")

	CrowdV4 = netip.MustParsePrefix("192.0.2.0/24")     // benign crowd
	NATV4   = netip.MustParsePrefix("203.0.113.0/25")   // NAT gateways (one address each)
	ProbeV4 = netip.MustParsePrefix("203.0.113.128/25") // probes
	CrowdV6 = netip.MustParsePrefix("2001:db8:1::/64")
	ProbeV6 = netip.MustParsePrefix("2001:db8:2::/64")

	// CGNATV4 is a carrier-grade NAT: one address (inside NATV4, so a ban
	// of it is a false ban) carrying about a thousand live users.
	CGNATV4 = netip.MustParseAddr("203.0.113.12")

	// FwdV4 is for prefilled FORWARDED entries: neither end is a victim
	// address, so no guard attributes them to a remote source. It is
	// neither an attack nor a legit range, and nothing routes it: the
	// entries exist only in the victim's table. Sources come from
	// FwdSrcV4, the destination is FwdDstV4.
	FwdV4    = netip.MustParsePrefix("198.51.100.128/25")
	FwdSrcV4 = netip.MustParsePrefix("198.51.100.128/26")
	FwdDstV4 = netip.MustParseAddrPort("198.51.100.254:443")

	// The SSH trick: an attacker's /24 (inside BotV4) from which X holds a
	// pre-auth connection to the victim's sshd while it and its neighbours
	// run silent bots, and from which the operator holds a real session.
	SSHNetV4   = netip.MustParsePrefix("198.18.7.0/24")
	SSHTrickX  = netip.MustParseAddr("198.18.7.10")
	OperatorV4 = netip.MustParseAddr("198.18.7.200")

	// The container behind the victim (Options.Container): a veth link of
	// its own, the victim's side the container's default route. The
	// victim's :443 is DNAT'ed to ContainerV4/V6:443.
	ContainerGWV4 = netip.MustParseAddr("198.51.100.17")
	ContainerV4   = netip.MustParseAddr("198.51.100.18")
	ContainerGWV6 = netip.MustParseAddr("2001:db8:ff:4::1")
	ContainerV6   = netip.MustParseAddr("2001:db8:ff:4::2")

	// The fleet's second victim (Options.Fleet): a link of its own to the
	// router, the same firewall and its own server.
	VictimBV4 = netip.MustParseAddr("198.51.100.14")
	VictimBV6 = netip.MustParseAddr("2001:db8:ff:5::2")
	// LAPIV4 is an address of the router's own (on its loopback), where
	// the fleet's CrowdSec Local API listens (port LAPIPort); both victims
	// reach it through their default route.
	LAPIV4 = netip.MustParseAddr("198.51.100.20")
)

// LAPIPort is the port of the fleet's Local API (CrowdSec's default).
const LAPIPort = 8080

// PublishedPort is the victim's port that the container option DNATs to
// the same port of the container, like Docker's -p 443:443.
const PublishedPort = 443

// AttackRanges and LegitRanges classify banned addresses.
var (
	AttackRanges = []netip.Prefix{BotV4, SpoofV4, SlowV4, BotV6}
	LegitRanges  = []netip.Prefix{CrowdV4, NATV4, ProbeV4, CrowdV6, ProbeV6}
)

// VictimRuleset is a typical small server's stateful firewall: established
// traffic accepted first, ssh/http/https (and QUIC) open, everything else
// dropped. Loading it also switches conntrack on in the victim namespace.
const VictimRuleset = `
table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		ct state invalid drop
		iif "lo" accept
		meta l4proto { icmp, ipv6-icmp } accept
		tcp dport { 22, 80, 443 } accept
		udp dport 443 accept
	}
}
`

// attackerRuleset makes the silent bots silent: stateless (no conntrack in
// the attacker), it drops every FIN and RST the attacker's stack would send
// from the bot ranges, so the victim never hears that a bot closed.
func attackerRuleset() string {
	return fmt.Sprintf(`
table inet lab {
	chain out {
		type filter hook output priority filter; policy accept;
		ip saddr { %s, %s } tcp flags & (fin | rst) != 0 drop
		ip6 saddr %s tcp flags & (fin | rst) != 0 drop
	}
}
`, BotV4, SlowV4, BotV6)
}

// victimIPTables is VictimRuleset for iptables-restore (iptables and
// ip6tables alike, but for ICMP): the same policy, in the filter table.
func victimIPTables(v6 bool) string {
	icmp := "-p icmp"
	if v6 {
		icmp = "-p ipv6-icmp"
	}
	return `*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -i lo -j ACCEPT
-A INPUT ` + icmp + ` -j ACCEPT
-A INPUT -p tcp -m multiport --dports 22,80,443 -j ACCEPT
-A INPUT -p udp --dport 443 -j ACCEPT
COMMIT
`
}

// Firewall is the victim's stateful firewall.
type Firewall string

// The victim's firewalls.
const (
	// FirewallNFT is VictimRuleset, loaded with nft (the default).
	FirewallNFT Firewall = "nftables"
	// FirewallIPTablesLegacy is the same policy through iptables-legacy and
	// ip6tables-legacy (the x_tables kernel interface), as on a host that
	// never moved to nftables: the victim then has no nftables ruleset.
	FirewallIPTablesLegacy Firewall = "iptables-legacy"
)

// Options change the topology from its default.
type Options struct {
	// Firewall is the victim's firewall; "" is FirewallNFT.
	Firewall Firewall
	// Container adds the Container namespace behind the victim and DNATs
	// the victim's PublishedPort (TCP, IPv4 and IPv6) to it, with the
	// victim forwarding: a service published from a container. The lab
	// server then runs in the container.
	Container bool
	// Fleet adds VictimB, a second victim behind the router with the same
	// firewall, and LAPIV4 on the router's loopback.
	Fleet bool
}

var seq atomic.Int64

// Topology is one lab instance.
type Topology struct {
	ID     string            // unique per run: "<pid>-<n>"
	NS     map[string]string // role -> namespace name
	Opt    Options           // how it differs from the default
	record string            // state file listing the namespaces
	log    *slog.Logger

	mu      sync.Mutex
	created []string
}

// DefaultStateDir holds the record files of live runs.
const DefaultStateDir = "/run/ctglab"

// New names a topology; nothing is created until Setup.
func New(stateDir string, log *slog.Logger, opt Options) *Topology {
	id := fmt.Sprintf("%d-%d", os.Getpid(), seq.Add(1))
	t := &Topology{ID: id, NS: map[string]string{}, Opt: opt, log: log,
		record: filepath.Join(stateDir, id+".ns")}
	for _, r := range t.roles() {
		t.NS[r] = NamePrefix + id + "-" + r
	}
	return t
}

// roles are the namespaces of this topology.
func (t *Topology) roles() []string {
	r := []string{Victim, Router, Attacker, Legit}
	if t.Opt.Container {
		r = append(r, Container)
	}
	if t.Opt.Fleet {
		r = append(r, VictimB)
	}
	return r
}

// ServerRole is the namespace the victim's service runs in: the
// container when there is one.
func (t *Topology) ServerRole() string {
	if t.Opt.Container {
		return Container
	}
	return Victim
}

// Setup creates the namespaces, links, routes, sysctls and rulesets. On
// error the caller must still call Close.
func (t *Topology) Setup(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(t.record), 0o755); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	for _, r := range t.roles() {
		name := t.NS[r]
		if err := t.recordNS(name); err != nil {
			return err
		}
		if err := run(ctx, nil, "ip", "netns", "add", name); err != nil {
			return err
		}
		t.mu.Lock()
		t.created = append(t.created, name)
		t.mu.Unlock()
		if err := run(ctx, nil, "ip", "-n", name, "link", "set", "lo", "up"); err != nil {
			return err
		}
		// No duplicate address detection on the links created next: their
		// link-local addresses would stay tentative for a second or two, and
		// IPv6 traffic through the router stalls until they settle (the first
		// IPv6 probes of a run waited ~2 s, some timed out).
		if err := run(ctx, nil, "ip", "netns", "exec", name, "sh", "-ec",
			"echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad; echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad"); err != nil {
			return err
		}
	}
	type link struct {
		role, ifc, rifc string
		v4, rv4         string
		v6, rv6         string
	}
	links := []link{
		{Victim, "eth0", "r-victim", "198.51.100.2/30", "198.51.100.1/30", "2001:db8:ff:1::2/64", "2001:db8:ff:1::1/64"},
		{Attacker, "eth0", "r-attacker", "198.51.100.6/30", "198.51.100.5/30", "2001:db8:ff:2::2/64", "2001:db8:ff:2::1/64"},
		{Legit, "eth0", "r-legit", "198.51.100.10/30", "198.51.100.9/30", "2001:db8:ff:3::2/64", "2001:db8:ff:3::1/64"},
	}
	if t.Opt.Fleet {
		links = append(links, link{VictimB, "eth0", "r-victim-b", VictimBV4.String() + "/30", "198.51.100.13/30", VictimBV6.String() + "/64", "2001:db8:ff:5::1/64"})
	}
	r := t.NS[Router]
	for _, l := range links {
		ns := t.NS[l.role]
		cmds := [][]string{
			{"ip", "-n", ns, "link", "add", l.ifc, "type", "veth", "peer", "name", l.rifc, "netns", r},
			{"ip", "-n", ns, "addr", "add", l.v4, "dev", l.ifc},
			{"ip", "-n", ns, "-6", "addr", "add", l.v6, "dev", l.ifc, "nodad"},
			{"ip", "-n", r, "addr", "add", l.rv4, "dev", l.rifc},
			{"ip", "-n", r, "-6", "addr", "add", l.rv6, "dev", l.rifc, "nodad"},
			{"ip", "-n", ns, "link", "set", "dev", l.ifc, "up"},
			{"ip", "-n", r, "link", "set", "dev", l.rifc, "up"},
			{"ip", "-n", ns, "route", "add", "default", "via", strings.Split(l.rv4, "/")[0]},
			{"ip", "-n", ns, "-6", "route", "add", "default", "via", strings.Split(l.rv6, "/")[0]},
		}
		for _, c := range cmds {
			if err := run(ctx, nil, c...); err != nil {
				return err
			}
		}
	}
	a, lg := t.NS[Attacker], t.NS[Legit]
	routes := [][]string{
		{"ip", "-n", r, "route", "add", "198.18.0.0/15", "via", "198.51.100.6"},
		{"ip", "-n", r, "-6", "route", "add", BotV6.String(), "via", "2001:db8:ff:2::2"},
		{"ip", "-n", r, "route", "add", CrowdV4.String(), "via", "198.51.100.10"},
		{"ip", "-n", r, "route", "add", "203.0.113.0/24", "via", "198.51.100.10"},
		{"ip", "-n", r, "-6", "route", "add", CrowdV6.String(), "via", "2001:db8:ff:3::2"},
		{"ip", "-n", r, "-6", "route", "add", ProbeV6.String(), "via", "2001:db8:ff:3::2"},
		// AnyIP: the namespace owns the whole range without configuring each address.
		{"ip", "-n", a, "route", "add", "local", BotV4.String(), "dev", "lo"},
		{"ip", "-n", a, "route", "add", "local", SlowV4.String(), "dev", "lo"},
		{"ip", "-n", a, "-6", "route", "add", "local", BotV6.String(), "dev", "lo"},
		{"ip", "-n", lg, "route", "add", "local", CrowdV4.String(), "dev", "lo"},
		{"ip", "-n", lg, "route", "add", "local", "203.0.113.0/24", "dev", "lo"},
		{"ip", "-n", lg, "-6", "route", "add", "local", CrowdV6.String(), "dev", "lo"},
		{"ip", "-n", lg, "-6", "route", "add", "local", ProbeV6.String(), "dev", "lo"},
	}
	if t.Opt.Fleet {
		routes = append(routes, []string{"ip", "-n", r, "addr", "add", LAPIV4.String() + "/32", "dev", "lo"})
	}
	for _, c := range routes {
		if err := run(ctx, nil, c...); err != nil {
			return err
		}
	}
	sysctls := map[string][]string{
		Router: {"net/ipv4/ip_forward=1", "net/ipv6/conf/all/forwarding=1",
			"net/ipv4/conf/all/rp_filter=0", "net/ipv4/conf/default/rp_filter=0"},
		// Room for many half-open requests, so the listen queue is not the
		// bottleneck before conntrack is.
		Victim: {"net/core/somaxconn=1048576", "net/ipv4/tcp_max_syn_backlog=1048576",
			"net/ipv4/conf/all/rp_filter=0", "net/ipv4/conf/default/rp_filter=0"},
		Attacker: {"net/ipv4/ip_local_port_range=1024 65535", "net/ipv6/ip_nonlocal_bind=1"},
		Legit:    {"net/ipv4/ip_local_port_range=1024 65535", "net/ipv6/ip_nonlocal_bind=1"},
	}
	if t.Opt.Container {
		// The service's socket limits go where the service runs; the victim
		// forwards to it.
		sysctls[Container] = sysctls[Victim]
		sysctls[Victim] = append(slices.Clone(sysctls[Victim]), "net/ipv4/ip_forward=1", "net/ipv6/conf/all/forwarding=1")
		if err := t.setupContainer(ctx); err != nil {
			return err
		}
	}
	if t.Opt.Fleet {
		sysctls[VictimB] = sysctls[Victim]
	}
	for role, kvs := range sysctls {
		if err := t.sysctl(ctx, role, kvs); err != nil {
			return err
		}
	}
	if err := t.victimFirewall(ctx, Victim, t.Opt.Container); err != nil {
		return err
	}
	if t.Opt.Fleet {
		if err := t.victimFirewall(ctx, VictimB, false); err != nil {
			return err
		}
	}
	if err := t.Run(ctx, Attacker, strings.NewReader(attackerRuleset()), "nft", "-f", "-"); err != nil {
		return err
	}
	return t.waitPaths(ctx)
}

func (t *Topology) sysctl(ctx context.Context, role string, kvs []string) error {
	var sb strings.Builder
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&sb, "echo '%s' > /proc/sys/%s\n", v, k)
	}
	return t.Run(ctx, role, nil, "sh", "-ec", sb.String())
}

// victimFirewall loads a victim's (role's) stateful firewall in its
// flavour, and the container's DNAT (dnat) in the same flavour, so an
// iptables-legacy victim has no nftables ruleset at all.
func (t *Topology) victimFirewall(ctx context.Context, role string, dnat bool) error {
	switch t.Opt.Firewall {
	case "", FirewallNFT:
		rules := VictimRuleset
		if dnat {
			rules += containerDNAT()
		}
		return t.Run(ctx, role, strings.NewReader(rules), "nft", "-f", "-")
	case FirewallIPTablesLegacy:
		for _, v6 := range []bool{false, true} {
			prog := "iptables-legacy-restore"
			if v6 {
				prog = "ip6tables-legacy-restore"
			}
			rules := victimIPTables(v6)
			if dnat {
				rules += containerDNATIPTables(v6)
			}
			if err := t.Run(ctx, role, strings.NewReader(rules), prog); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("topology: unknown victim firewall %q", t.Opt.Firewall)
}

// containerDNAT publishes the container's PublishedPort on the victim's
// addresses, in nftables.
func containerDNAT() string {
	return fmt.Sprintf(`
table inet nat {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %[1]s tcp dport %[5]d dnat ip to %[2]s:%[5]d
		ip6 daddr %[3]s tcp dport %[5]d dnat ip6 to [%[4]s]:%[5]d
	}
}
`, VictimV4, ContainerV4, VictimV6, ContainerV6, PublishedPort)
}

// containerDNATIPTables is containerDNAT for iptables-restore.
func containerDNATIPTables(v6 bool) string {
	from, to := VictimV4.String(), netip.AddrPortFrom(ContainerV4, PublishedPort).String()
	if v6 {
		from, to = VictimV6.String(), netip.AddrPortFrom(ContainerV6, PublishedPort).String()
	}
	return fmt.Sprintf("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d %s -p tcp --dport %d -j DNAT --to-destination %s\nCOMMIT\n",
		from, PublishedPort, to)
}

// setupContainer joins the container to the victim by a veth pair; the
// victim is its default route.
func (t *Topology) setupContainer(ctx context.Context) error {
	v, c := t.NS[Victim], t.NS[Container]
	cmds := [][]string{
		{"ip", "-n", v, "link", "add", "ctr0", "type", "veth", "peer", "name", "eth0", "netns", c},
		{"ip", "-n", v, "addr", "add", ContainerGWV4.String() + "/30", "dev", "ctr0"},
		{"ip", "-n", v, "-6", "addr", "add", ContainerGWV6.String() + "/64", "dev", "ctr0", "nodad"},
		{"ip", "-n", c, "addr", "add", ContainerV4.String() + "/30", "dev", "eth0"},
		{"ip", "-n", c, "-6", "addr", "add", ContainerV6.String() + "/64", "dev", "eth0", "nodad"},
		{"ip", "-n", v, "link", "set", "dev", "ctr0", "up"},
		{"ip", "-n", c, "link", "set", "dev", "eth0", "up"},
		{"ip", "-n", c, "route", "add", "default", "via", ContainerGWV4.String()},
		{"ip", "-n", c, "-6", "route", "add", "default", "via", ContainerGWV6.String()},
	}
	for _, cmd := range cmds {
		if err := run(ctx, nil, cmd...); err != nil {
			return err
		}
	}
	return nil
}

// waitPaths pings the victim from the attacker and legit namespaces over
// both families until every path answers (at most 10 s), so neighbour
// discovery is settled before a run's clock starts: without it the first
// IPv6 probes of a run waited up to a second for the router's neighbour
// entries.
func (t *Topology) waitPaths(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	paths := map[string][]string{
		Attacker: {VictimV4.String(), VictimV6.String()},
		Legit:    {VictimV4.String(), VictimV6.String()},
	}
	if t.Opt.Container {
		// The DNAT'ed connections' second leg.
		paths[Victim] = []string{ContainerV4.String(), ContainerV6.String()}
	}
	if t.Opt.Fleet {
		for _, role := range []string{Attacker, Legit} {
			paths[role] = append(paths[role], VictimBV4.String(), VictimBV6.String())
		}
		// Both victims reach the Local API's address.
		paths[Victim] = append(paths[Victim], LAPIV4.String())
		paths[VictimB] = []string{LAPIV4.String()}
	}
	for _, role := range []string{Attacker, Legit, Victim, VictimB} {
		for _, dst := range paths[role] {
			for {
				err := t.Run(ctx, role, nil, "ping", "-c", "1", "-W", "1", "-q", dst)
				if err == nil {
					break
				}
				if time.Now().After(deadline) || ctx.Err() != nil {
					return fmt.Errorf("topology: %s cannot reach %s: %w", role, dst, err)
				}
			}
		}
	}
	return nil
}

// Command returns a command that runs inside the role's namespace.
func (t *Topology) Command(ctx context.Context, role string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", t.NS[role]}, args...)...)
	// If the runner dies, its children must not outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 3 * time.Second
	return cmd
}

// Run runs a command inside the role's namespace and returns its error with
// the output attached.
func (t *Topology) Run(ctx context.Context, role string, stdin *strings.Reader, args ...string) error {
	return run(ctx, stdin, append([]string{"ip", "netns", "exec", t.NS[role]}, args...)...)
}

// Output runs a command inside the role's namespace and returns its stdout.
func (t *Topology) Output(ctx context.Context, role string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", t.NS[role]}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("in %s: %s: %w: %s", t.NS[role], strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// Close deletes every namespace this topology created and its record file.
func (t *Topology) Close() error {
	t.mu.Lock()
	names := t.created
	t.created = nil
	t.mu.Unlock()
	var errs []error
	for _, n := range names {
		if err := deleteNS(n); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(t.record); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (t *Topology) recordNS(name string) error {
	f, err := os.OpenFile(t.record, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("record namespace %s: %w", name, err)
	}
	_, err = fmt.Fprintln(f, name)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("record namespace %s: %w", name, err)
	}
	return nil
}

func deleteNS(name string) error {
	if !strings.HasPrefix(name, NamePrefix) {
		return fmt.Errorf("refusing to delete namespace %q: not a lab namespace", name)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return run(context.Background(), nil, "ip", "netns", "del", name)
}

// Cleanup removes the namespaces recorded in stateDir by runs whose process
// is gone (or by every run if all is set). It deletes only recorded names
// that carry NamePrefix, never anything else. It returns what it removed.
func Cleanup(stateDir string, all bool) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(stateDir, "*.ns"))
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, f := range files {
		pidStr, _, _ := strings.Cut(filepath.Base(f), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil {
			continue
		}
		if !all && pid != os.Getpid() && syscall.Kill(pid, 0) == nil {
			continue // that run is still alive: its own cleanup owns it
		}
		data, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ok := true
		for _, name := range strings.Fields(string(data)) {
			if !strings.HasPrefix(name, NamePrefix) {
				continue
			}
			if _, err := os.Stat(filepath.Join("/run/netns", name)); err != nil {
				continue
			}
			if err := deleteNS(name); err != nil {
				errs = append(errs, err)
				ok = false
				continue
			}
			removed = append(removed, name)
		}
		if ok {
			_ = os.Remove(f)
		}
	}
	return removed, errors.Join(errs...)
}

func run(ctx context.Context, stdin *strings.Reader, args ...string) error {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
