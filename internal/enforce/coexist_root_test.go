package enforce

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/testutil"
)

// Coexistence with the firewalls other software installs on the same host:
// Docker's and kube-proxy's (with Calico's raw table jumps) iptables rules,
// firewalld's nftables table and ufw's iptables chains, saved in
// testdata/coexist in the shape each tool writes them. Each is loaded in
// the victim namespace before ctguard sets up, on the backend an operator
// with that host would run, and the test shows: ctguard's setup leaves the
// rule set as it was (apart from ctguard's own objects, counters, and the
// empty raw tables, accept policies only, that the ipset backend leaves
// where the host had none: the kernel's, or iptables-nft's); a
// ban drops a new connection from the banned client and from a member of
// a banned prefix before conntrack (no entry) while an unbanned client,
// which the host's rules allow, connects; the other tool reloading its
// rules on top does not make ctguard's check fail (no rebuild, no fight),
// and the bans still drop; unbans and ctguard's teardown leave the other
// tool's rules byte for byte as they were.

// coexistCase is one host rule set on one ctguard backend.
type coexistCase struct {
	name string
	// host is the iptables flavour the host's rules are written with, ""
	// for a host whose rules are nftables only.
	host      IPTablesFlavour
	iptables  string // fixture for iptables-restore, "" when none
	ip6tables string // fixture for ip6tables-restore, "" when none
	ipsets    string // fixture for ipset restore (before the iptables rules that use it), "" when none
	nft       string // fixture for nft -f (a whole table, reloaded as firewalld does), "" when none
	be        labBackend
	// v6: the rule set allows the test port over IPv6 too; an IPv6 client
	// is banned and tested as well.
	v6 bool
	// firstChain is the raw PREROUTING jump target that the reload on top
	// puts before ctguard's jump (as Calico's felix does in its default
	// insert mode), "" when ctguard's jump stays first.
	firstChain string
}

// coexistPort is the port the host's rules allow and the victim listens on.
const coexistPort = 8080

var coexistCases = []coexistCase{
	// Docker with iptables-nft (Debian 11+, Ubuntu 22.04+): ctguard's auto
	// choice is nftables.
	{name: "docker/iptables-nft/ctguard-nftables", host: IPTablesNFT, iptables: "docker.rules", be: labNFT},
	// Docker with iptables-legacy: ctguard on ipset with the same iptables,
	// or on nftables (auto picks it whenever the kernel can).
	{name: "docker/iptables-legacy/ctguard-ipset", host: IPTablesLegacy, iptables: "docker.rules", be: labIPSetLegacy},
	{name: "docker/iptables-legacy/ctguard-nftables", host: IPTablesLegacy, iptables: "docker.rules", be: labNFT},
	{name: "kube-proxy/iptables-nft/ctguard-nftables", host: IPTablesNFT, iptables: "kube-proxy.rules",
		ipsets: "kube-proxy.ipset", be: labNFT, firstChain: "cali-PREROUTING"},
	{name: "kube-proxy/iptables-legacy/ctguard-ipset", host: IPTablesLegacy, iptables: "kube-proxy.rules",
		ipsets: "kube-proxy.ipset", be: labIPSetLegacy, firstChain: "cali-PREROUTING"},
	{name: "firewalld/ctguard-nftables", nft: "firewalld.nft", be: labNFT, v6: true},
	{name: "ufw/iptables-nft/ctguard-nftables", host: IPTablesNFT, iptables: "ufw.rules", ip6tables: "ufw6.rules", be: labNFT, v6: true},
	{name: "ufw/iptables-legacy/ctguard-ipset", host: IPTablesLegacy, iptables: "ufw.rules", ip6tables: "ufw6.rules", be: labIPSetLegacy, v6: true},
	{name: "ufw/iptables-nft/ctguard-ipset", host: IPTablesNFT, iptables: "ufw.rules", ip6tables: "ufw6.rules", be: labIPSetNFT, v6: true},
}

func TestRootCoexist(t *testing.T) {
	for _, c := range coexistCases {
		t.Run(c.name, func(t *testing.T) { c.run(t) })
	}
}

func (c coexistCase) tools() []string {
	tools := []string{"ip", "nft", "ipset", "sh"}
	if c.host != "" {
		tools = append(tools, c.host.tool(false, "save"), c.host.tool(false, "restore"),
			c.host.tool(true, "save"), c.host.tool(true, "restore"))
	}
	return tools
}

func (c coexistCase) run(t *testing.T) {
	testutil.RequireRoot(t, c.tools()...)
	ctx := context.Background()
	var before string
	l := newLabLoaded(t, c.be, func(l *lab) {
		c.load(l, false)
		before = c.snapshot(l)
	})
	l.listen(coexistPort)

	// 1. ctguard's setup changed nothing of the host's rules, and its
	// drop runs before conntrack.
	if after := c.snapshot(l); after != before {
		t.Fatalf("ctguard's setup changed the host's rules:\n%s", lineDiff(before, after))
	}
	c.requireFirst(l, "")

	// 2. Bans drop before conntrack; the host's rules let others in.
	l.requireTracking("192.0.2.2", coexistPort)
	bans := []string{"192.0.2.3", "192.0.2.64/26"}
	banned := []string{"192.0.2.3", "192.0.2.66"} // the address, a member of the prefix
	if c.v6 {
		l.requireTracking("2001:db8::2", coexistPort)
		bans = append(bans, "2001:db8::3")
		banned = append(banned, "2001:db8::3")
	}
	for _, b := range bans {
		l.ban(b, time.Hour)
	}
	c.requireDropped(l, banned)
	if cn := l.counters(); cn.Ban4.Packets == 0 || cn.Net4.Packets == 0 || (c.v6 && cn.Ban6.Packets == 0) {
		t.Fatalf("drop counters did not rise: %+v", cn)
	}
	l.requireTracking("192.0.2.2", coexistPort)
	if c.v6 {
		l.requireTracking("2001:db8::2", coexistPort)
	}

	// 3. The other tool reloads its rules on top: ctguard's check finds
	// nothing to repair (it would otherwise rebuild at every check and
	// fight the tool), and the bans still drop.
	c.load(l, true)
	if p, err := l.fw.Check(ctx, 0); err != nil || p != "" {
		t.Fatalf("check after the host's reload: problem %q, err %v\n%s", p, err, l.listing())
	}
	if r, err := l.eng.Reconcile(ctx); err != nil || r.Rebuilt {
		t.Fatalf("reconcile after the host's reload: %+v %v", r, err)
	}
	c.requireFirst(l, c.firstChain)
	c.requireDropped(l, banned)
	l.requireTracking("192.0.2.2", coexistPort)
	if c.firstChain != "" && c.be.backend == BackendNFTables && c.host == IPTablesNFT {
		// A Calico host-endpoint policy marks the test port's packets for
		// the ACCEPT at the end of cali-PREROUTING, and iptables' raw
		// table is made to run before ctguard's chain (at the same
		// priority the hook registered last runs first: here iptables-nft's
		// table, recreated as a host reload may do). That ACCEPT ends only
		// iptables' raw table: ctguard's own base chain still drops. (On
		// the ipset backend such an accept, reached through the jump that
		// felix keeps ahead of ctguard's, bypasses the bans, and the check
		// cannot tell it from the marking that the jump usually does.)
		saved := filepath.Join(t.TempDir(), "raw.rules")
		l.vic.MustRun(t, "sh", "-c", c.host.tool(false, "save")+" -t raw > "+saved+" && nft delete table ip raw && "+
			c.host.tool(false, "restore")+" --noflush < "+saved)
		l.vic.MustRun(t, c.host.tool(false, ""), "-t", "raw", "-A", "cali-from-host-endpoint", "-p", "tcp", "--dport",
			"8080", "-j", "MARK", "--set-xmark", "0x10000/0x10000")
		c.requireDropped(l, banned)
		out := l.vic.MustRun(t, c.host.tool(false, "save"), "-c", "-t", "raw")
		accepted := regexp.MustCompile(`(?m)^\[([1-9]\d*):\d+\] -A cali-PREROUTING .*cali:tAs4Ky5jbM1uLDQQ.* -j ACCEPT$`)
		if !accepted.MatchString(out) {
			t.Fatalf("Calico's raw ACCEPT did not see the banned packets: the check proves nothing\n%s", out)
		}
	}

	// 4. Unbans (Apply's deletes) and ctguard's teardown leave the host's
	// rules as they were, and nothing of ctguard's.
	mid := c.snapshot(l)
	for _, b := range bans {
		if _, err := l.eng.Unban(ctx, pfx(b)); err != nil {
			t.Fatalf("unban %s: %v", b, err)
		}
	}
	if es := l.elements(); len(es) != 0 {
		t.Fatalf("elements left after the unbans: %v", es)
	}
	l.requireTracking("192.0.2.3", coexistPort)
	if l.be.backend == BackendIPSet {
		if err := l.ips.Remove(ctx); err != nil {
			t.Fatal(err)
		}
	} else {
		// What README and the package's prerm tell an operator to run.
		l.vic.MustRun(t, "nft", "delete", "table", "inet", TableName)
	}
	c.requireNoCtguard(l)
	if after := c.snapshot(l); after != mid {
		t.Fatalf("ctguard's teardown changed the host's rules:\n%s", lineDiff(mid, after))
	}
	t.Logf("host rules unchanged by setup, bans, the host's reload, unbans and teardown (%d lines compared)",
		strings.Count(mid, "\n"))
}

// coexistFixture is the absolute path of a file in testdata/coexist.
func coexistFixture(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", "coexist", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// load loads the case's rule set into the victim. onTop is the reload of a
// running host: iptables-restore --noflush (its chains flushed and
// refilled, its rules in built-in chains added again, nothing else
// touched), firewalld's delete-and-recreate of its own table, and Calico's
// jump moved back to the top of raw PREROUTING.
func (c coexistCase) load(l *lab, onTop bool) {
	t := l.t
	t.Helper()
	restore := func(v6 bool, file string) {
		cmd := c.host.tool(v6, "restore")
		if onTop {
			cmd += " --noflush"
		}
		l.vic.MustRun(t, "sh", "-c", cmd+" < "+coexistFixture(t, file))
	}
	if c.ipsets != "" {
		l.vic.MustRun(t, "sh", "-c", "ipset restore -exist < "+coexistFixture(t, c.ipsets))
	}
	if c.iptables != "" {
		restore(false, c.iptables)
	}
	if c.ip6tables != "" {
		restore(true, c.ip6tables)
	}
	if c.nft != "" {
		script := filepath.Join(t.TempDir(), "load.nft")
		body := `include "` + coexistFixture(t, c.nft) + "\"\n"
		if onTop {
			// firewalld's reload: its own table deleted and built again in
			// one transaction.
			body = "table inet firewalld\ndelete table inet firewalld\n" + body
		}
		if err := os.WriteFile(script, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		l.vic.MustRun(t, "nft", "-f", script)
	}
	if onTop && c.firstChain != "" {
		// Felix keeps its jump at the top of raw PREROUTING: after the
		// reload above it finds it behind ctguard's (twice), and moves it.
		jump := `-m comment --comment "cali:6gwbT8clXdHdC1b1" -j ` + c.firstChain
		script := "*raw\n-D PREROUTING " + jump + "\n-D PREROUTING " + jump + "\n-I PREROUTING 1 " + jump + "\nCOMMIT\n"
		l.vic.MustRun(t, "sh", "-c", c.host.tool(false, "restore")+" --noflush <<'EOF'\n"+script+"EOF")
	}
}

var (
	// ctguardIPTLine matches ctguard's own lines in iptables-save output.
	ctguardIPTLine = regexp.MustCompile(`^(:` + IPTablesChain + ` |-A ` + IPTablesChain + ` |-A PREROUTING -m comment --comment ` +
		IPTablesComment + ` -j ` + IPTablesChain + `$)`)
	nftCounter = regexp.MustCompile(`counter packets \d+ bytes \d+`)
)

// snapshot is the host's whole firewall as its tools print it: every table
// of iptables-save and ip6tables-save of the host's flavour, nft list
// ruleset, ipset save; without ctguard's own objects, with counters zeroed.
func (c coexistCase) snapshot(l *lab) string {
	t := l.t
	t.Helper()
	var b strings.Builder
	if c.host != "" {
		for _, v6 := range []bool{false, true} {
			tool := c.host.tool(v6, "save")
			b.WriteString("## " + tool + "\n" + normIPTSave(l.vic.MustRun(t, tool)))
		}
	}
	// With ctguard's ipset backend on iptables-nft, nft shows ctguard's
	// chain in iptables' own tables: iptables-nft-save above covers them.
	if c.be.backend == BackendNFTables || c.host != IPTablesNFT {
		b.WriteString("## nft list ruleset\n" + normNFT(l.vic.MustRun(t, "nft", "list", "ruleset")))
	}
	b.WriteString("## ipset save\n")
	for _, line := range strings.Split(l.vic.MustRun(t, "ipset", "save"), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && !strings.HasPrefix(f[1], IPSetPrefix) {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// normIPTSave drops comments, ctguard's lines and tables that hold nothing
// (no rules, built-in chains with policy ACCEPT: the raw table that the
// kernel or iptables-nft instantiates when ctguard first uses it), and
// zeroes the chain counters.
func normIPTSave(out string) string {
	var b strings.Builder
	var table []string
	empty := true
	for _, line := range strings.Split(out, "\n") {
		switch {
		case line == "" || strings.HasPrefix(line, "#") || ctguardIPTLine.MatchString(line):
			continue
		case strings.HasPrefix(line, "*"):
			table, empty = nil, true
		case strings.HasPrefix(line, ":"):
			line = policyCounters.ReplaceAllString(line, "[0:0]")
			if f := strings.Fields(line); len(f) < 2 || f[1] != "ACCEPT" {
				empty = false
			}
		case line == "COMMIT":
			if !empty {
				b.WriteString(strings.Join(table, "\n") + "\nCOMMIT\n")
			}
			table = nil
			continue
		default:
			empty = false
		}
		table = append(table, line)
	}
	return b.String()
}

// normNFT drops table inet ctguard and zeroes counters.
func normNFT(out string) string {
	var b strings.Builder
	skip := false
	for _, line := range strings.Split(out, "\n") {
		switch {
		case line == "table inet "+TableName+" {":
			skip = true
		case skip && line == "}":
			skip = false
		case !skip && line != "" && !strings.HasPrefix(strings.TrimSpace(line), "#"):
			b.WriteString(nftCounter.ReplaceAllString(line, "counter packets 0 bytes 0") + "\n")
		}
	}
	return b.String()
}

// requireDropped dials each banned source once: nothing connects and
// conntrack gets no entry.
func (c coexistCase) requireDropped(l *lab, banned []string) {
	l.t.Helper()
	for _, src := range banned {
		if conns := l.dial(src, coexistPort, 1); len(conns) != 0 {
			l.t.Fatalf("banned %s connected\n%s", src, l.listing())
		}
		if n := l.count(src); n != 0 {
			l.t.Fatalf("banned %s created %d conntrack entries", src, n)
		}
	}
}

// requireFirst checks that ctguard's drop comes first in raw prerouting:
// on nftables its chain is at priority raw (before the host's raw chains,
// firewalld's raw + 10 among them); on ipset its jump is the first rule of
// raw PREROUTING in both families, or the second behind a jump to
// firstChain (which accepts nothing of the test's traffic).
func (c coexistCase) requireFirst(l *lab, firstChain string) {
	t := l.t
	t.Helper()
	if c.be.backend == BackendNFTables {
		if out := l.vic.MustRun(t, "nft", "list", "chain", "inet", TableName, ChainName); !strings.Contains(out, "hook prerouting priority raw;") {
			t.Fatalf("ctguard's chain is not at priority raw:\n%s", out)
		}
		return
	}
	jump := "-A PREROUTING " + joinWords(jumpRule)
	for _, v6 := range []bool{false, true} {
		var rules []string
		for _, line := range strings.Split(l.vic.MustRun(t, c.be.flavour.tool(v6, "save"), "-t", "raw"), "\n") {
			if strings.HasPrefix(line, "-A PREROUTING ") {
				rules = append(rules, line)
			}
		}
		want := 0
		if firstChain != "" && !v6 {
			want = 1
			if len(rules) == 0 || !strings.HasSuffix(rules[0], "-j "+firstChain) {
				t.Fatalf("raw PREROUTING does not start with the jump to %s:\n%s", firstChain, strings.Join(rules, "\n"))
			}
		}
		if len(rules) <= want || rules[want] != jump {
			t.Fatalf("%s: ctguard's jump is not rule %d of raw PREROUTING:\n%s", c.be.flavour.tool(v6, "save"), want+1,
				strings.Join(rules, "\n"))
		}
	}
}

// requireNoCtguard checks that nothing of ctguard's is left.
func (c coexistCase) requireNoCtguard(l *lab) {
	t := l.t
	t.Helper()
	if out := l.vic.MustRun(t, "nft", "list", "tables"); strings.Contains(out, "inet "+TableName+"\n") {
		t.Fatalf("table inet %s left:\n%s", TableName, out)
	}
	if c.be.backend != BackendIPSet {
		return
	}
	if out := l.vic.MustRun(t, "ipset", "list", "-n"); strings.Contains(out, IPSetPrefix) {
		t.Fatalf("ipsets left:\n%s", out)
	}
	for _, v6 := range []bool{false, true} {
		if out := l.vic.MustRun(t, c.be.flavour.tool(v6, "save")); strings.Contains(out, IPTablesChain) {
			t.Fatalf("%s still shows ctguard's chain:\n%s", c.be.flavour.tool(v6, "save"), out)
		}
	}
}

// lineDiff lists the lines only in a (-) and only in b (+).
func lineDiff(a, b string) string {
	only := func(x, y string) []string {
		left := map[string]int{}
		for _, l := range strings.Split(y, "\n") {
			left[l]++
		}
		var out []string
		for _, l := range strings.Split(x, "\n") {
			if left[l] > 0 {
				left[l]--
			} else {
				out = append(out, l)
			}
		}
		return out
	}
	var out []string
	for _, l := range only(a, b) {
		out = append(out, "- "+l)
	}
	for _, l := range only(b, a) {
		out = append(out, "+ "+l)
	}
	if len(out) == 0 {
		return "(same lines, different order)\n--- before:\n" + a + "--- after:\n" + b
	}
	return strings.Join(out, "\n")
}
