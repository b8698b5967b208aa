package enforce

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/testutil"
	"github.com/vishvananda/netns"
)

// The real probe in a fresh namespace: this kernel has nf_tables, so auto
// picks nftables without trying iptables; ipset asked for probes ipset and
// the iptables flavour; nothing of the probe is left behind.
func TestRootProbe(t *testing.T) {
	testutil.RequireRoot(t, append(labIPSetLegacy.tools(), labIPSetNFT.tools()...)...)
	for _, fl := range []IPTablesFlavour{IPTablesLegacy, IPTablesNFT} {
		t.Run(string(fl), func(t *testing.T) {
			ns := testutil.NewNS(t)
			h, err := netns.GetFromName(ns.Name)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			ctx := context.Background()
			snapshot := func() string {
				return ns.MustRun(t, "nft", "list", "tables") + ns.MustRun(t, "ipset", "list", "-n") +
					ns.MustRun(t, "sh", "-c", fl.tool(false, "save")+" | grep -v '^#' || true; "+fl.tool(true, "save")+" | grep -v '^#' || true")
			}

			f := Probe(ctx, ProbeOptions{Want: "auto", NetNSFd: int(h), IPTables: fl})
			if !f.NFTables.OK || !f.NFTSetTimeouts.OK || !f.NFTRawPrerouting.OK || f.IPSet.Probed || f.IPTables.Probed {
				t.Fatalf("auto probe: %+v", f)
			}
			if b, reason, err := ChooseBackend("auto", f); b != BackendNFTables || err != nil {
				t.Fatalf("auto: %q %q %v", b, reason, err)
			}
			if s := snapshot(); strings.Contains(s, "probe") || strings.Contains(s, "*raw") {
				t.Fatalf("the nftables probe left something:\n%s", s)
			}

			f = Probe(ctx, ProbeOptions{Want: "ipset", NetNSFd: int(h), IPTables: fl})
			if f.NFTables.Probed || !f.IPSet.OK || !f.IPSetTimeouts.OK || !f.IPTables.OK || f.IPTablesVersion != "v1.8.9" {
				t.Fatalf("ipset probe: %+v", f)
			}
			want := map[IPTablesFlavour]string{IPTablesLegacy: "legacy", IPTablesNFT: "nf_tables"}[fl]
			if f.IPTablesFlavour != want {
				t.Fatalf("flavour %q, want %q", f.IPTablesFlavour, want)
			}
			b, reason, err := ChooseBackend("ipset", f)
			if b != BackendIPSet || err != nil || !strings.Contains(reason, want) {
				t.Fatalf("ipset: %q %q %v", b, reason, err)
			}
			if _, _, err := ChooseBackend("nftables", f); err == nil || !strings.Contains(err.Error(), "nf_tables (not probed)") {
				t.Fatalf("nftables after an ipset-only probe: %v", err)
			}
			if s := snapshot(); strings.Contains(s, "probe") || strings.Contains(s, "PROBE") || strings.Contains(s, "ctguard") {
				t.Fatalf("the ipset probe left something:\n%s", s)
			}
			// The backend the probe chose works here.
			fw, err := NewBackend(b, nil, BackendOptions{NetNSFd: int(h), IPTables: fl})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fw.Setup(ctx, []Element{{Prefix: pfx("198.51.100.7"), TTL: time.Minute}}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
