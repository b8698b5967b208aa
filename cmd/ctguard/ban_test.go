package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestEnforceUsageErrors: bad input is named, exits 2, and changes nothing
// (the state directory is not even created).
func TestEnforceUsageErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	sd := []string{"--state-dir", dir, "--socket", "/nonexistent/ctguard.sock"}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"ban"}, "missing ADDR|CIDR"},
		{[]string{"ban", "192.0.2.300"}, `"192.0.2.300" is not an IP address`},
		{[]string{"ban", "example.com"}, `"example.com" is not an IP address`},
		{[]string{"ban", "192.0.2.1/24"}, `"192.0.2.1/24" has host bits set; the network is 192.0.2.0/24`},
		{[]string{"ban", "192.0.2.0/33"}, `"192.0.2.0/33" is not a CIDR`},
		{[]string{"ban", "10.0.0.0/7"}, "too broad"},
		{[]string{"ban", "fe80::1%eth0"}, "zone"},
		{[]string{"ban", "192.0.2.7", "--ttl", "-5m"}, `"-5m": must be positive`},
		{[]string{"ban", "192.0.2.7", "--ttl", "0"}, `"0": must be positive`},
		{[]string{"ban", "192.0.2.7", "--ttl", "soon"}, `"soon": not a duration`},
		{[]string{"ban", "192.0.2.7", "--ttl", "31d"}, `"31d": exceeds the maximum 30d`},
		{[]string{"ban", "192.0.2.7", "--ttl", "100ms"}, "minimum"},
		{[]string{"ban", "192.0.2.7", "192.0.2.8"}, `unexpected argument "192.0.2.8"`},
		{[]string{"ban", "--ttl", "5m", "192.0.2.7", "--ssh-ports", "22,x"}, `--ssh-ports "22,x"`},
		{[]string{"ban", "192.0.2.7", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"unban"}, "missing ADDR|CIDR"},
		{[]string{"unban", "2001:db8::/129"}, "not a CIDR"},
		{[]string{"purge", "nonsense"}, `"nonsense" is not an IP address`},
		{[]string{"allow", "192.0.2.7", "--ttl", "0s"}, `"0s": must be positive`},
		{[]string{"allow", "192.0.2.7", "--ttl", "1h", "--remove"}, "exclude each other"},
		{[]string{"allow", "192.0.2.1/31"}, "host bits set"},
		{[]string{"list", "extra"}, `unexpected argument "extra"`},
	}
	for _, c := range cases {
		out, errs, code := runCLI(t, append(c.args, sd...)...)
		if code != 2 || !strings.Contains(errs, c.want) || out != "" {
			t.Errorf("%v: exit %d, stderr %q, stdout %q; want exit 2 and %q", c.args, code, errs, out, c.want)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("bad input created the state directory: %v", err)
	}
}

func TestEnforceNeedsRoot(t *testing.T) {
	old := geteuid
	geteuid = func() int { return 1000 }
	t.Cleanup(func() { geteuid = old })
	dir := filepath.Join(t.TempDir(), "state")
	for _, args := range [][]string{{"ban", "192.0.2.7"}, {"unban", "192.0.2.7"}, {"list"}, {"purge", "192.0.2.7"}, {"allow", "192.0.2.7"}} {
		_, errs, code := runCLI(t, append(args, "--state-dir", dir, "--socket", "/nonexistent/ctguard.sock")...)
		if code != 1 || !strings.Contains(errs, "needs root") || !strings.Contains(errs, "sudo") {
			t.Errorf("%v as non-root: exit %d, %q", args, code, errs)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatal("non-root run created the state directory")
	}
}
