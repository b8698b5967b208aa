package enforce

import (
	"strings"
	"testing"
)

func TestChooseBackend(t *testing.T) {
	ok := Feature{Probed: true, OK: true}
	fail := func(d string) Feature { return Feature{Probed: true, Detail: d} }
	nftOK := Features{NFTables: ok, NFTSetTimeouts: ok, NFTRawPrerouting: ok}
	ipsetOK := Features{IPSet: ok, IPSetTimeouts: ok, IPTables: ok, IPTablesFlavour: "legacy", IPTablesVersion: "v1.6.0"}
	both := nftOK
	both.IPSet, both.IPSetTimeouts, both.IPTables = ok, ok, ok
	noNFT := ipsetOK
	noNFT.NFTables = fail("the kernel has no nftables support")
	noTimeouts := ipsetOK
	noTimeouts.NFTables, noTimeouts.NFTRawPrerouting = ok, ok
	noTimeouts.NFTSetTimeouts = fail("operation not supported")
	nothing := Features{NFTables: fail("EPROTONOSUPPORT"), IPSet: fail("no ip_set module")}

	for _, c := range []struct {
		name    string
		want    string
		f       Features
		backend Backend
		reason  string // in the reason, or in the error when backend is ""
	}{
		{"auto picks nftables when it works", "auto", both, BackendNFTables, "auto: nf_tables"},
		{"empty means auto", "", nftOK, BackendNFTables, "auto"},
		{"auto, nftables works, ipset not probed", "auto", nftOK, BackendNFTables, "auto"},
		{"auto falls back to ipset without nf_tables", "auto", noNFT, BackendIPSet, "nf_tables (failed: the kernel has no nftables support)"},
		{"auto names the flavour", "auto", noNFT, BackendIPSet, "iptables v1.6.0 (legacy)"},
		{"auto falls back without set timeouts", "AUTO", noTimeouts, BackendIPSet, "nftables set timeouts (failed: operation not supported)"},
		{"auto with nothing usable names both", "auto", nothing, "", "nftables is missing nf_tables (failed: EPROTONOSUPPORT)"},
		{"auto with nothing usable names ipset's lack", "auto", nothing, "", "ipset is missing ipset (failed: no ip_set module)"},
		{"nftables asked and usable", "nftables", both, BackendNFTables, "asked for"},
		{"nftables asked, unusable", "nftables", noNFT, "", "backend nftables was asked for but is unusable here: missing nf_tables"},
		{"nftables asked, no raw chain", "nftables", Features{NFTables: ok, NFTSetTimeouts: ok, NFTRawPrerouting: fail("EOPNOTSUPP")}, "", "raw priority (failed: EOPNOTSUPP)"},
		{"ipset asked while nftables works", "ipset", both, BackendIPSet, "ipset asked for"},
		{"ipset asked, iptables missing", "ipset", Features{IPSet: ok, IPSetTimeouts: ok, IPTables: fail("iptables-restore not found")}, "", "iptables with the set match in the raw table (failed: iptables-restore not found)"},
		{"ipset asked, not probed", "ipset", nftOK, "", "ipset (not probed)"},
		{"unknown value", "iptables", both, "", `unknown backend "iptables"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, reason, err := ChooseBackend(c.want, c.f)
			if b != c.backend {
				t.Fatalf("backend %q (%q, %v), want %q", b, reason, err, c.backend)
			}
			if c.backend == "" {
				if err == nil || !strings.Contains(err.Error(), c.reason) {
					t.Fatalf("error %v, want it to contain %q", err, c.reason)
				}
				return
			}
			if err != nil || !strings.Contains(reason, c.reason) {
				t.Fatalf("reason %q (err %v), want it to contain %q", reason, err, c.reason)
			}
		})
	}
}

func TestFeatureString(t *testing.T) {
	for f, want := range map[Feature]string{
		{}:                                    "not probed",
		{Probed: true, OK: true}:              "ok",
		{Probed: true, OK: true, Detail: "x"}: "ok (x)",
		{Probed: true, Detail: "EPERM"}:       "failed: EPERM",
	} {
		if got := f.String(); got != want {
			t.Errorf("%+v: %q, want %q", f, got, want)
		}
	}
}

func TestNewBackend(t *testing.T) {
	if fw, err := NewBackend(BackendNFTables, nil, BackendOptions{}); err != nil || fw.(*NFT) == nil {
		t.Fatal(fw, err)
	}
	if fw, err := NewBackend(BackendIPSet, nil, BackendOptions{SSHPorts: []uint16{2222}, IPTables: IPTablesLegacy}); err != nil || fw.(*IPSet).flavour != IPTablesLegacy {
		t.Fatal(fw, err)
	}
	if _, err := NewBackend("pf", nil, BackendOptions{}); err == nil {
		t.Fatal("unknown backend accepted")
	}
}
