package enforce

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Backend is a Firewall implementation.
type Backend string

// The backends.
const (
	// BackendNFTables: table inet ctguard (NFT).
	BackendNFTables Backend = "nftables"
	// BackendIPSet: ipsets and an iptables chain in the raw table (IPSet).
	BackendIPSet Backend = "ipset"
)

// The values of the backend choice (config: [enforce] backend).
const (
	WantAuto     = "auto"
	WantNFTables = string(BackendNFTables)
	WantIPSet    = string(BackendIPSet)
)

// Feature is one thing a probe tried.
type Feature struct {
	// Probed is false when the probe did not try it (it was not needed).
	Probed bool
	// OK is true when it worked.
	OK bool
	// Detail says what failed (or, for a working feature, what was found).
	Detail string
}

func (f Feature) String() string {
	switch {
	case !f.Probed:
		return "not probed"
	case f.OK && f.Detail != "":
		return "ok (" + f.Detail + ")"
	case f.OK:
		return "ok"
	}
	return "failed: " + f.Detail
}

// Features is what a probe found in a network namespace.
type Features struct {
	// NFTables: nf_tables answers and takes an inet table.
	NFTables Feature
	// NFTSetTimeouts: a set with per-element timeouts.
	NFTSetTimeouts Feature
	// NFTRawPrerouting: a filter chain on the prerouting hook at priority
	// raw (-300), before conntrack.
	NFTRawPrerouting Feature
	// IPSet: the kernel's ipset answers over netlink.
	IPSet Feature
	// IPSetTimeouts: hash:ip and hash:net sets with timeouts, IPv4 and IPv6.
	IPSetTimeouts Feature
	// IPTables: iptables-restore/-save of the flavour can put a -m set
	// drop rule in a chain of the raw table, for IPv4 and IPv6.
	IPTables Feature
	// IPTablesFlavour is the flavour of the host's `iptables` ("legacy" or
	// "nf_tables", from iptables --version), "" when unknown.
	IPTablesFlavour string
	// IPTablesVersion is iptables' version ("v1.8.9"), "" when unknown.
	IPTablesVersion string
}

// missing lists the failed or unprobed features a backend needs, by name.
func (f Features) missing(b Backend) []string {
	type need struct {
		name string
		f    Feature
	}
	var needs []need
	switch b {
	case BackendNFTables:
		needs = []need{{"nf_tables", f.NFTables}, {"nftables set timeouts", f.NFTSetTimeouts},
			{"nftables prerouting chain at raw priority", f.NFTRawPrerouting}}
	case BackendIPSet:
		needs = []need{{"ipset", f.IPSet}, {"ipset hash:ip/hash:net with timeouts", f.IPSetTimeouts},
			{"iptables with the set match in the raw table", f.IPTables}}
	}
	var out []string
	for _, n := range needs {
		if !n.f.OK {
			out = append(out, n.name+" ("+n.f.String()+")")
		}
	}
	return out
}

// ChooseBackend picks the backend for want ("auto", "nftables" or "ipset";
// "" means auto) from what a probe found. auto prefers nftables when it has
// everything ctguard needs, else ipset. A backend that lacks something is
// an error naming what; reason says why the choice was made.
func ChooseBackend(want string, probe Features) (Backend, string, error) {
	switch strings.ToLower(strings.TrimSpace(want)) {
	case WantNFTables:
		if m := probe.missing(BackendNFTables); len(m) > 0 {
			return "", "", fmt.Errorf("backend nftables was asked for but is unusable here: missing %s", strings.Join(m, "; "))
		}
		return BackendNFTables, "nftables asked for, and nf_tables has set timeouts and a raw-priority prerouting chain", nil
	case WantIPSet:
		if m := probe.missing(BackendIPSet); len(m) > 0 {
			return "", "", fmt.Errorf("backend ipset was asked for but is unusable here: missing %s", strings.Join(m, "; "))
		}
		return BackendIPSet, "ipset asked for, and ipset and " + probe.iptablesName() + " work", nil
	case WantAuto, "":
		nm := probe.missing(BackendNFTables)
		if len(nm) == 0 {
			return BackendNFTables, "auto: nf_tables has set timeouts and a raw-priority prerouting chain", nil
		}
		im := probe.missing(BackendIPSet)
		if len(im) == 0 {
			return BackendIPSet, fmt.Sprintf("auto: nftables is unusable (missing %s); ipset and %s work",
				strings.Join(nm, "; "), probe.iptablesName()), nil
		}
		return "", "", fmt.Errorf("no usable firewall backend: nftables is missing %s; ipset is missing %s",
			strings.Join(nm, "; "), strings.Join(im, "; "))
	}
	return "", "", fmt.Errorf("unknown backend %q: want %q, %q or %q", want, WantAuto, WantNFTables, WantIPSet)
}

func (f Features) iptablesName() string {
	s := "iptables"
	if f.IPTablesVersion != "" {
		s += " " + f.IPTablesVersion
	}
	if f.IPTablesFlavour != "" {
		s += " (" + f.IPTablesFlavour + ")"
	}
	return s
}

// ProbeOptions configures Probe.
type ProbeOptions struct {
	// Want is the backend choice ("auto", "nftables", "ipset"): only what
	// it may use is probed (auto tries ipset and iptables only when
	// nftables fails, so a host that uses nftables gets no iptables raw
	// table from the probe).
	Want string
	// NetNSFd, when non-zero, probes that network namespace (tests).
	NetNSFd int
	// IPTables is the iptables flavour the ipset backend would use.
	IPTables IPTablesFlavour
}

// Probe finds out what the kernel and the tools offer, by creating and
// deleting throw-away objects (a table inet ctguard_probe_PID with a timeout
// set and a raw-priority prerouting chain; ipsets ctguard-probe-PID-*; a
// chain CTGUARD-PROBE in the raw table). It never touches ctguard's own
// objects or anyone else's. With iptables-nft, the probe leaves the (empty)
// raw tables that iptables-nft creates when they did not exist.
func Probe(ctx context.Context, opt ProbeOptions) Features {
	var f Features
	want := strings.ToLower(strings.TrimSpace(opt.Want))
	if want != WantIPSet {
		probeNFT(&f, opt.NetNSFd)
	}
	if want == WantIPSet || (want != WantNFTables && len(f.missing(BackendNFTables)) > 0) {
		probeIPSet(ctx, &f, opt)
	}
	return f
}

func probeNFT(f *Features, netnsFd int) {
	f.NFTables, f.NFTSetTimeouts, f.NFTRawPrerouting = Feature{Probed: true}, Feature{Probed: true}, Feature{Probed: true}
	opts := []nftables.ConnOption{}
	if netnsFd != 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		f.NFTables.Detail = explain(err).Error()
		f.NFTSetTimeouts.Probed, f.NFTRawPrerouting.Probed = false, false
		return
	}
	t := &nftables.Table{Name: fmt.Sprintf("ctguard_probe_%d", os.Getpid()), Family: nftables.TableFamilyINet}
	// One step at a time, each in its own batch, so that the failing one
	// is named.
	c.AddTable(t)
	if err := c.Flush(); err != nil {
		f.NFTables.Detail = "create an inet table: " + explain(err).Error()
		f.NFTSetTimeouts.Probed, f.NFTRawPrerouting.Probed = false, false
		return
	}
	f.NFTables.OK = true
	defer func() {
		c.DelTable(t)
		_ = c.Flush()
	}()
	s := &nftables.Set{Table: t, Name: "probe", KeyType: nftables.TypeIPAddr, HasTimeout: true, Interval: true, Timeout: time.Minute}
	if err := c.AddSet(s, []nftables.SetElement{{Key: []byte{192, 0, 2, 1}, Timeout: time.Second}, {Key: []byte{192, 0, 2, 2}, IntervalEnd: true}}); err != nil {
		f.NFTSetTimeouts.Detail = err.Error()
	} else if err := c.Flush(); err != nil {
		f.NFTSetTimeouts.Detail = "create an interval set with timeouts: " + explain(err).Error()
	} else {
		f.NFTSetTimeouts.OK = true
	}
	c.AddChain(&nftables.Chain{Name: "probe", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(chainPriority)})
	if err := c.Flush(); err != nil {
		f.NFTRawPrerouting.Detail = "create a filter chain on prerouting at priority -300: " + explain(err).Error()
	} else {
		f.NFTRawPrerouting.OK = true
	}
}

func probeIPSet(ctx context.Context, f *Features, opt ProbeOptions) {
	f.IPSet, f.IPSetTimeouts = Feature{Probed: true}, Feature{Probed: true}
	x, err := dialIPSet(opt.NetNSFd)
	if err != nil {
		f.IPSet.Detail = err.Error()
		f.IPSetTimeouts.Probed = false
		return
	}
	defer x.Close()
	v, vmin, err := x.protocol()
	if err != nil {
		f.IPSet.Detail = "the kernel does not answer ipset requests (no ip_set module?): " + explain(err).Error()
		f.IPSetTimeouts.Probed = false
		return
	}
	if vmin > ipsetProtocol || v < ipsetProtocol {
		f.IPSet.Detail = fmt.Sprintf("the kernel speaks ipset protocol %d-%d, ctguard %d", vmin, v, ipsetProtocol)
		f.IPSetTimeouts.Probed = false
		return
	}
	f.IPSet.OK, f.IPSet.Detail = true, fmt.Sprintf("protocol %d", v)

	prefix := fmt.Sprintf("ctguard-probe-%d-", os.Getpid())
	var made []string
	defer func() {
		for _, n := range made {
			_ = x.destroy(n)
		}
	}()
	set4 := ""
	set6 := ""
	for _, d := range ipsetDefs[:4] {
		spec := ipsetCreateSpec{Name: prefix + strings.TrimPrefix(d.name, IPSetPrefix), Type: d.typ, Family: d.family, Timeout: 60, MaxElem: 1024}
		rev, err := x.typeRevision(d.typ, d.family)
		if err == nil {
			spec.Revision = min(rev, ipsetRevisionCap[d.typ])
			err = x.create(spec)
		}
		if err != nil {
			f.IPSetTimeouts.Detail = err.Error()
			return
		}
		made = append(made, spec.Name)
		switch {
		case d.typ == "hash:net" && d.family == unix.NFPROTO_IPV4:
			set4 = spec.Name
		case d.typ == "hash:net":
			set6 = spec.Name
		}
	}
	// An element with a timeout into each, as Apply sends it.
	for i, n := range made {
		e := []ipsetEntry{{Prefix: pfxFor(i), Timeout: 5}}
		m, w := adtMessages(ipsetCmdAdd, n, e)
		if err := x.batch(m, w); err != nil {
			f.IPSetTimeouts.Detail = err.Error()
			return
		}
	}
	f.IPSetTimeouts.OK = true
	probeIPTables(ctx, f, opt, set4, set6)
}

// pfxFor is a documentation address or prefix for the probe's i-th set
// (ban4, net4, ban6, net6).
func pfxFor(i int) netip.Prefix {
	return [...]netip.Prefix{
		netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("2001:db8::1/128"), netip.MustParsePrefix("2001:db8:1::/64"),
	}[i]
}

func probeIPTables(ctx context.Context, f *Features, opt ProbeOptions, set4, set6 string) {
	f.IPTables = Feature{Probed: true}
	out, err := runTool(ctx, opt.NetNSFd, nil, opt.IPTables.tool(false, ""), "--version")
	if err != nil {
		f.IPTables.Detail = err.Error()
		return
	}
	// "iptables v1.8.9 (nf_tables)" or "iptables v1.8.9 (legacy)"; 1.6 prints no flavour.
	fields := strings.Fields(string(out))
	for _, w := range fields {
		switch {
		case strings.HasPrefix(w, "v") && f.IPTablesVersion == "":
			f.IPTablesVersion = w
		case strings.HasPrefix(w, "(") && strings.HasSuffix(w, ")"):
			f.IPTablesFlavour = strings.Trim(w, "()")
		}
	}
	if f.IPTablesFlavour == "" && f.IPTablesVersion != "" && f.IPTablesVersion < "v1.8" {
		f.IPTablesFlavour = "legacy" // before 1.8 there was only x_tables
	}
	chain := fmt.Sprintf("%s-PROBE-%d", IPTablesChain, os.Getpid())
	ip := &IPSet{flavour: opt.IPTables, netns: opt.NetNSFd}
	for _, v6 := range []bool{false, true} {
		set := set4
		if v6 {
			set = set6
		}
		add := fmt.Sprintf("*raw\n:%s - [0:0]\n-A %s -m set --match-set %s src -m comment --comment %s -j DROP\n"+
			"-A %s -p tcp -m multiport --dports 22 -j RETURN\nCOMMIT\n", chain, chain, set, IPTablesComment, chain)
		err := ip.restore(ctx, v6, add)
		// Delete the chain whatever happened (a failed restore changed
		// nothing, and then this fails harmlessly).
		_ = ip.restore(ctx, v6, fmt.Sprintf("*raw\n-F %s\n-X %s\nCOMMIT\n", chain, chain))
		if err != nil {
			f.IPTables.Detail = err.Error()
			return
		}
	}
	f.IPTables.OK, f.IPTables.Detail = true, strings.TrimSpace(f.iptablesName())
}

// NewBackend returns the Firewall of a backend.
func NewBackend(b Backend, log *slog.Logger, opt BackendOptions) (Firewall, error) {
	switch b {
	case BackendNFTables:
		return NewNFT(log, NFTOptions{NetNSFd: opt.NetNSFd, SSHPorts: opt.SSHPorts}), nil
	case BackendIPSet:
		return NewIPSet(log, IPSetOptions{NetNSFd: opt.NetNSFd, SSHPorts: opt.SSHPorts, IPTables: opt.IPTables}), nil
	}
	return nil, fmt.Errorf("unknown backend %q", b)
}

// BackendOptions configures NewBackend.
type BackendOptions struct {
	NetNSFd  int
	SSHPorts []uint16
	IPTables IPTablesFlavour
}
