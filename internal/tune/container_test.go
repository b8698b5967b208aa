package tune

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Container hosts: kube-proxy owns nf_conntrack_max and the established and
// close_wait timeouts, and NAT'ed connections need an established timeout
// above the TCP keepalive time.

func TestParseRules(t *testing.T) {
	read := func(p string) string {
		t.Helper()
		data, err := os.ReadFile(filepath.Join("testdata", p))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	for _, tc := range []struct {
		name, src, data string
		nat             []string // substrings of the NAT evidence, in order
		agent, evidence string
	}{
		{"docker iptables", "iptables-save", read("docker/rules/iptables-save"),
			[]string{"-j MASQUERADE", "-j DNAT --to-destination 172.17.0.2:80"}, "docker", "iptables-save: chain DOCKER"},
		{"kube-proxy iptables", "iptables-save", read("kube/rules/iptables-save"),
			// KUBE-MARK-MASQ only marks: not a translation.
			[]string{"-j MASQUERADE --random-fully", "-j DNAT --to-destination 10.0.0.10:6443"}, "kube-proxy", "iptables-save: chain KUBE-NODEPORTS"},
		{"kube-proxy nftables", "nft", read("rules/kube-proxy.nft"),
			// "ct status dnat accept" in the filter table matches, it does not translate.
			[]string{"dnat to 10.0.0.10:6443", "masquerade fully-random"}, "kube-proxy", "nft: table ip kube-proxy"},
		{"plain filter", "nft", "table inet filter {\n\tchain input {\n\t\tct status dnat accept\n\t\ttcp dport 22 accept\n\t}\n}\n", nil, "", ""},
		{"plain iptables", "iptables-save", "*filter\n:INPUT DROP [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n", nil, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nat, agents := ParseRules(tc.src, tc.data)
			if len(nat) != len(tc.nat) {
				t.Fatalf("NAT rules %q, want %d matching %q", nat, len(tc.nat), tc.nat)
			}
			for i, want := range tc.nat {
				if !strings.Contains(nat[i], want) || !strings.HasPrefix(nat[i], tc.src+": ") {
					t.Errorf("NAT rule %d = %q, want %q", i, nat[i], want)
				}
			}
			switch {
			case tc.agent == "" && len(agents) > 0:
				t.Errorf("agents %+v, want none", agents)
			case tc.agent != "" && (len(agents) != 1 || agents[0].Name != tc.agent || agents[0].Evidence != tc.evidence):
				t.Errorf("agents %+v, want %s (%s)", agents, tc.agent, tc.evidence)
			}
		})
	}
}

// On a kube-proxy host tune names the kube-proxy settings with the values
// it would have set, and --apply leaves nf_conntrack_max and the established
// timeout alone (kube-proxy would overwrite them when it starts) while it
// still applies the rest.
func TestKubeProxyOwnsItems(t *testing.T) {
	r := fixture(t, "kube")
	h := readHost(t, r)
	if h.CPUs != 4 || !h.HasAgent("kube-proxy") || len(h.NAT) == 0 {
		t.Fatalf("kube host: %d CPUs, agents %+v, NAT %q", h.CPUs, h.Agents, h.NAT)
	}
	p := Recommend(h, nil, Budget{})
	mx, _ := p.Item(Max)
	est, _ := p.Item(Established)
	if mx.Recommended != 417792 || mx.Owner != "kube-proxy" || est.Recommended != 8400 || est.Owner != "kube-proxy" {
		t.Fatalf("max %+v\nestablished %+v", mx, est)
	}
	if b, _ := p.Item(Buckets); b.Owner != "" || !b.Change {
		t.Errorf("buckets %+v: kube-proxy only raises hashsize to max/4, tune keeps them", b)
	}
	// 417792 / 4 CPUs = 104448 per core; min = the whole value.
	want := map[string][2]string{
		"conntrack.maxPerCore":            {"--conntrack-max-per-core", "104448"},
		"conntrack.min":                   {"--conntrack-min", "417792"},
		"conntrack.tcpEstablishedTimeout": {"--conntrack-tcp-timeout-established", "2h20m0s"},
		"conntrack.tcpCloseWaitTimeout":   {"--conntrack-tcp-timeout-close-wait", "1h0m0s"},
	}
	if len(p.KubeProxy) != len(want) {
		t.Errorf("kube-proxy settings %+v", p.KubeProxy)
	}
	for _, k := range p.KubeProxy {
		if w, ok := want[k.Field]; !ok || k.Flag != w[0] || k.Value != w[1] {
			t.Errorf("%+v, want %v", k, w)
		}
	}
	var out bytes.Buffer
	WritePlan(&out, p)
	for _, s := range []string{
		"kube-proxy settings (kube-proxy overwrites these sysctls when it starts; tune --apply leaves them to it):",
		"conntrack.maxPerCore:", "(flag --conntrack-max-per-core=104448)", "max(maxPerCore x 4 CPUs, min) = 417792",
		"(flag --conntrack-min=417792)",
		"conntrack.tcpEstablishedTimeout:", "(flag --conntrack-tcp-timeout-established=2h20m0s)",
		"(flag --conntrack-tcp-timeout-close-wait=1h0m0s)",
		"entries (set by kube-proxy)",
	} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("plan lacks %q", s)
		}
	}

	// An apply from before kube-proxy came left max in ctguard's file: the
	// line goes, as kube-proxy owns the value now.
	own := filepath.Join(r.Etc, "sysctl.d", SysctlFile)
	os.MkdirAll(filepath.Dir(own), 0o755)
	os.WriteFile(own, []byte("net.netfilter.nf_conntrack_max = 200000\n"), 0o644)
	c, err := Prepare(r, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Refused) != 2 || !strings.HasPrefix(c.Refused[0], "net.netfilter.nf_conntrack_max = 417792: kube-proxy sets it") ||
		!strings.HasPrefix(c.Refused[1], "net.netfilter.nf_conntrack_tcp_timeout_established = 8400: kube-proxy") {
		t.Errorf("refused %q", c.Refused)
	}
	for _, l := range c.Live {
		if l.Key == mx.Key || l.Key == est.Key {
			t.Errorf("live change of an owned value: %+v", l)
		}
	}
	var diff bytes.Buffer
	WriteDiff(&diff, c)
	for _, s := range []string{"-net.netfilter.nf_conntrack_max = 200000", "+net.netfilter.nf_conntrack_buckets = 417792",
		"not applied: net.netfilter.nf_conntrack_max = 417792", "change kube-proxy's configuration instead"} {
		if !strings.Contains(diff.String(), s) {
			t.Errorf("diff lacks %q:\n%s", s, diff.String())
		}
	}
	if _, err := Apply(r, c, nil); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, r.SysctlPath(Max)); got != "131072" {
		t.Errorf("live max %s, want kube-proxy's 131072 untouched", got)
	}
	if got := mustRead(t, r.SysctlPath(Established)); got != "86400" {
		t.Errorf("live established %s, want 86400 untouched", got)
	}
	if got := mustRead(t, r.SysctlPath(Buckets)); got != "417792" {
		t.Errorf("live buckets %s: the rest must still be applied", got)
	}
	if sys := mustRead(t, own); strings.Contains(sys, Max+" ") || strings.Contains(sys, Established) {
		t.Errorf("owned keys in ctguard's file:\n%s", sys)
	}

	// Detected by its iptables chains alone (kube-proxy not running now).
	r2 := fixture(t, "kube")
	os.RemoveAll(filepath.Join(r2.Procfs, "4242"))
	h2 := readHost(t, r2)
	if len(h2.Agents) != 1 || h2.Agents[0].Evidence != "iptables-save: chain KUBE-NODEPORTS" {
		t.Errorf("agents %+v", h2.Agents)
	}
	p2 := Recommend(h2, nil, Budget{})
	if mx, _ := p2.Item(Max); mx.Owner != "kube-proxy" {
		t.Errorf("max %+v", mx)
	}
	// Without the CPU count the per-core value is a formula.
	os.Remove(filepath.Join(r2.Sysfs, "devices/system/cpu/online"))
	for _, k := range Recommend(readHost(t, r2), nil, Budget{}).KubeProxy {
		if k.Field == "conntrack.maxPerCore" && (k.Value != "417792/CPUs" || !strings.Contains(k.Note, "CPU count is unknown")) {
			t.Errorf("%+v", k)
		}
	}
}

// The established timeout is never advised below the NAT floor on a host
// that NATs, whatever lowered the other floors (here the host's own
// tcp_keepalive_time of 600 s); a plain host keeps its advice.
func TestNATFloor(t *testing.T) {
	if NATFloor != 8400 {
		t.Fatalf("NATFloor %d: 7200 + 9 x 75 = 7875, rounded up to 8400", NATFloor)
	}
	lowKeepalive := func(t *testing.T, name string) Roots {
		r := fixture(t, name)
		if err := os.WriteFile(filepath.Join(r.Procfs, "sys/net/ipv4/tcp_keepalive_time"), []byte("600\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return r
	}
	natObs := func(nated int) *Observation {
		o := NewObserver(432000, 300)
		o.BeginScan(time.Unix(0, 0))
		for i := range nated {
			o.Add(Flow{Proto: 6, Src: netip.MustParseAddr("203.0.113.50"), Dst: netip.MustParseAddr("192.0.2.1"),
				SrcPort: uint16(50000 + i), DstPort: 8080, Remaining: 431000, NAT: true})
		}
		o.Add(Flow{Proto: 6, Src: netip.MustParseAddr("203.0.113.51"), Dst: netip.MustParseAddr("192.0.2.1"),
			SrcPort: 40000, DstPort: 443, Remaining: 431000})
		o.EndScan(10)
		return o.Observation()
	}
	for _, tc := range []struct {
		name    string
		roots   func(t *testing.T) Roots
		obs     *Observation
		budget  Budget
		want    int64
		natHas  string // substring of Plan.NAT; "" = not NAT'ing
		floor   int64
		fibRule bool
	}{
		{"plain host", func(t *testing.T) Roots { return lowKeepalive(t, "incident-5.15") }, nil, Budget{}, 3600, "", 0, false},
		{"plain host, entries not translated", func(t *testing.T) Roots { return lowKeepalive(t, "incident-5.15") }, natObs(0), Budget{}, 3600, "", 0, false},
		{"docker rules", func(t *testing.T) Roots { return fixture(t, "docker") }, nil, Budget{}, 8400, "NAT rule iptables-save: -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE", 8400, true},
		{"translated entries", func(t *testing.T) Roots { return lowKeepalive(t, "incident-5.15") }, natObs(3), Budget{}, 8400, "3 ESTABLISHED entries in the table have their address translated", 8400, true},
		{"dockerd process", func(t *testing.T) Roots { return lowKeepalive(t, "host-64g") }, nil, Budget{}, 8400, "docker (process dockerd (pid 1312))", 8400, true},
		{"kube-proxy", func(t *testing.T) Roots { return fixture(t, "kube") }, nil, Budget{}, 8400, "NAT rule iptables-save:", 8400, true},
		{"operator's lower floor", func(t *testing.T) Roots { return fixture(t, "docker") }, nil, Budget{NATFloor: 4000}, 4200, "NAT rule", 4000, true},
		{"floor off", func(t *testing.T) Roots { return fixture(t, "docker") }, nil, Budget{NATFloor: -1}, 3600, "NAT rule", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Recommend(readHost(t, tc.roots(t)), tc.obs, tc.budget)
			est, _ := p.Item(Established)
			if est.Recommended != tc.want {
				t.Errorf("established %d, want %d: %s", est.Recommended, tc.want, est.Reason)
			}
			if (tc.natHas == "") != (p.NAT == "") || !strings.Contains(p.NAT, tc.natHas) || p.NATFloor != tc.floor {
				t.Errorf("NAT %q floor %d, want %q floor %d", p.NAT, p.NATFloor, tc.natHas, tc.floor)
			}
			why := strings.Contains(est.Reason, "NAT floor: this host translates addresses") &&
				strings.Contains(est.Reason, "breaks (its translation is lost)") && strings.Contains(est.Reason, "keepalive")
			if why != (tc.floor > 0) {
				t.Errorf("established reason (floor %d) explains the NAT floor: %v\n%s", tc.floor, why, est.Reason)
			}
			if tc.floor == NATFloor && est.Recommended < NATFloor {
				t.Errorf("established %d below the NAT floor", est.Recommended)
			}
			// The ct timeout policy must not shorten NAT'ed flows either.
			if got := strings.Contains(p.Policy.Nft, "fib daddr type local tcp dport"); got != tc.fibRule {
				t.Errorf("policy restricted to local destinations: %v, want %v\n%s", got, tc.fibRule, p.Policy.Nft)
			}
			var out bytes.Buffer
			WritePlan(&out, p)
			if tc.floor > 0 && !strings.Contains(out.String(), "established timeout floor") {
				t.Errorf("plan does not show the NAT floor:\n%s", out.String())
			}
		})
	}
}

func TestOnlineCPUs(t *testing.T) {
	for in, want := range map[string]int{"0-3\n": 4, "0\n": 1, "0-3,8-11,16\n": 9, "": 0, "x": 0, "3-1": 0} {
		r := Roots{Sysfs: t.TempDir()}
		os.MkdirAll(filepath.Join(r.Sysfs, "devices/system/cpu"), 0o755)
		os.WriteFile(filepath.Join(r.Sysfs, "devices/system/cpu/online"), []byte(in), 0o644)
		if got := onlineCPUs(r); got != want {
			t.Errorf("%q: %d CPUs, want %d", in, got, want)
		}
	}
}
