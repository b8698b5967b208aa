package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ctguard.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsValid(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if c.Daemon.Interval[0] != 30*time.Second || c.Policy.Threshold[0] != 100 {
		t.Errorf("defaults %+v", c.Daemon)
	}
}

func TestOverride(t *testing.T) {
	p := write(t, `
[daemon]
poll = "500ms"
interval = ["30s", "10s", "2s", "1s"]
dry_run = true

[policy]
threshold = [200, 100, 50, 20]
base_ttl = "1h"

[policy.weights]
active = 0.05

[allow]
addresses = ["198.51.100.7", "203.0.113.0/24", "2001:db8::/48"]

[metrics]
listen = "127.0.0.1:9473"
`)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Daemon.Poll != 500*time.Millisecond || !c.Daemon.DryRun || c.Daemon.Interval[0] != 30*time.Second ||
		c.Policy.Threshold[3] != 20 || c.Policy.BaseTTL != time.Hour || c.Policy.Weights.Active != 0.05 ||
		c.Policy.Weights.Idle != 1 || c.Metrics.Listen != "127.0.0.1:9473" {
		t.Errorf("override: %+v", c)
	}
	ps, _ := c.AllowPrefixes()
	if len(ps) != 3 || ps[0].String() != "198.51.100.7/32" {
		t.Errorf("allow %v", ps)
	}
	// Untouched keys keep their defaults.
	if c.Policy.MaxTTL != 24*time.Hour || c.Snapshot.V4Prefix != 24 {
		t.Errorf("defaults lost: %+v", c.Policy)
	}
}

func TestErrorsNameFileKeyValue(t *testing.T) {
	cases := []struct{ body, want string }{
		{"[daemon]\npol = \"1s\"\n", "unknown key daemon.pol"},
		{"[policy]\nthreshold = [100, 60, 30]\n", "threshold"},
		{"[policy]\nhigh_fill = 2.0\n", "policy.high_fill = 2"},
		{"[daemon]\npoll = \"fast\"\n", "poll"},
		{"[daemon]\ninterval = [\"1s\", \"5s\", \"2s\", \"1s\"]\n", "daemon.interval"},
		{"[daemon]\nreader = \"magic\"\n", `daemon.reader = "magic"`},
		{"[allow]\naddresses = [\"300.1.1.1\"]\n", `"300.1.1.1" is not an address`},
		{"[allow]\naddresses = [\"192.0.2.1/24\"]\n", `"192.0.2.1/24" has host bits set; the network is 192.0.2.0/24`},
		{"[allow]\nssh_ports = [0]\n", "allow.ssh_ports: 0"},
		{"[metrics]\nlisten = \"0.0.0.0:9473\"\n", "metrics.public"},
		{"[metrics]\nlisten = \"9473\"\n", "host:port"},
		{"[log]\nformat = \"xml\"\n", `log.format = "xml"`},
		{"[snapshot]\nv4_prefix = 40\n", "snapshot.v4_prefix = 40"},
		{"this is not toml", "line 1"},
	}
	for _, c := range cases {
		p := write(t, c.body)
		_, err := Load(p)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%q: error %v, want one naming %s and %q", c.body, err, p, c.want)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.toml")); err == nil {
		t.Error("missing file accepted")
	}
	p := write(t, "[metrics]\nlisten = \"0.0.0.0:9473\"\npublic = true\n")
	if _, err := Load(p); err != nil {
		t.Errorf("public metrics: %v", err)
	}
}
