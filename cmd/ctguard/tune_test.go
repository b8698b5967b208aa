package main

import (
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ctguard/ctguard/internal/tune"
)

// tuneFixture copies internal/tune/testdata/<name> to a temp dir and
// returns the --procfs/--sysfs/--etc flags for it, and last --rules when
// the fixture has saved firewall rules.
func tuneFixture(t *testing.T, name string) (string, []string) {
	t.Helper()
	src := filepath.Join("..", "..", "internal", "tune", "testdata", name)
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	if ro, err := os.ReadFile(filepath.Join(src, "readonly")); err == nil {
		for _, rel := range strings.Fields(string(ro)) {
			os.Chmod(filepath.Join(dst, rel), 0o444)
		}
	}
	for _, d := range []string{"proc", "sys", "etc"} {
		os.MkdirAll(filepath.Join(dst, d), 0o755)
	}
	args := []string{"--procfs", filepath.Join(dst, "proc"), "--sysfs", filepath.Join(dst, "sys"), "--etc", filepath.Join(dst, "etc")}
	if st, err := os.Stat(filepath.Join(dst, "rules")); err == nil && st.IsDir() {
		args = append(args, "--rules", filepath.Join(dst, "rules"))
	}
	return dst, args
}

// snapshotTree maps every file under dir to its content.
func snapshotTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			data, _ := os.ReadFile(p)
			out[p] = string(data)
		}
		return nil
	})
	return out
}

func sameTree(t *testing.T, before, after map[string]string) {
	t.Helper()
	for p, v := range before {
		if after[p] != v {
			t.Errorf("%s changed: %q -> %q", p, v, after[p])
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s created", p)
		}
	}
}

// withStdin replaces the confirmation input for one test.
func withStdin(t *testing.T, input string, tty bool) {
	t.Helper()
	old := tuneStdin
	tuneStdin = func() (io.Reader, bool) { return strings.NewReader(input), tty }
	t.Cleanup(func() { tuneStdin = old })
}

func TestTuneIncidentHost(t *testing.T) {
	_, roots := tuneFixture(t, "incident-4.9")
	out, errOut, code := runCLI(t, append([]string{"tune"}, roots...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"kernel 4.9.0-19-amd64",
		"kernel default for this RAM: max 16384, buckets 4096",
		// The scan read the fixture's /proc/net/nf_conntrack: the incident's
		// ten inbound entries, idle 195..2850 s.
		"observed: 1 scan(s)", "inbound n=10 p50=1752 p90=2772 p99=2850 max=2850",
		"recommended: 21504 entries = 9.4 MiB = 1.9 % of RAM",
		"nf_conntrack.hashsize", "8x = 172032",
		"0 of 10 inbound ESTABLISHED entries",
		"ct timeout set", "tcp dport { 443 }",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if !hasRow(out, "net.netfilter.nf_conntrack_max", "16384", "21504", "entries") ||
		!hasRow(out, "net.netfilter.nf_conntrack_tcp_timeout_established", "432000", "8400", "s") ||
		!hasRow(out, "net.netfilter.nf_conntrack_udp_timeout", "30", "(keep)", "s") {
		t.Error("table rows missing")
	}
	if t.Failed() {
		t.Log(out)
	}
}

// hasRow reports whether out has a line with exactly these fields.
func hasRow(out string, fields ...string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.Join(strings.Fields(l), " ") == strings.Join(fields, " ") {
			return true
		}
	}
	return false
}

func TestTuneJSON(t *testing.T) {
	_, roots := tuneFixture(t, "incident-5.15")
	out, errOut, code := runCLI(t, append([]string{"tune", "--json", "--mem-budget", "4"}, roots...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var v struct {
		Plan tune.Plan `json:"plan"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	mx, ok := v.Plan.Item(tune.Max)
	// 4 % of 509956096 B / 392 B = 52036 -> 51200.
	if !ok || mx.Current != 4096 || mx.Recommended != 51200 || v.Plan.DefaultMax != 4096 {
		t.Errorf("max item %+v, default %d", mx, v.Plan.DefaultMax)
	}
	if v.Plan.Observation == nil || v.Plan.Observation.Inbound.N != 10 {
		t.Errorf("observation %+v", v.Plan.Observation)
	}
}

func TestTuneBadFlags(t *testing.T) {
	dir, roots := tuneFixture(t, "incident-5.15")
	before := snapshotTree(t, dir)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--mem-budget", "0"}, "--mem-budget"},
		{[]string{"--mem-budget", "80"}, "--mem-budget"},
		{[]string{"--mem-budget", "NaN"}, "--mem-budget"},
		{[]string{"--mem-budget", "abc"}, "mem-budget"},
		{[]string{"--observe", "-1s"}, "--observe"},
		{[]string{"--observe", "48h"}, "--observe"},
		{[]string{"--observe", "soon"}, "observe"},
		{[]string{"--apply", "--rollback"}, "--apply and --rollback"},
		{[]string{"--yes"}, "--yes"},
		{[]string{"--apply", "--yes", "--procfs", filepath.Join(dir, "nope")}, "--procfs"},
		{[]string{"extra"}, "unexpected argument"},
	} {
		args := append(append([]string{"tune"}, roots...), tc.args...)
		_, errOut, code := runCLI(t, args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 naming %q", tc.args, code, errOut, tc.want)
		}
	}
	sameTree(t, before, snapshotTree(t, dir))
}

func TestTuneApplyNeedsConfirmation(t *testing.T) {
	dir, roots := tuneFixture(t, "incident-4.9")
	before := snapshotTree(t, dir)
	args := append([]string{"tune", "--apply"}, roots...)

	withStdin(t, "y\n", false)
	_, errOut, code := runCLI(t, args...)
	if code != 1 || !strings.Contains(errOut, "not a terminal") {
		t.Errorf("no tty: exit %d, %q", code, errOut)
	}
	sameTree(t, before, snapshotTree(t, dir))

	withStdin(t, "n\n", true)
	out, errOut, code := runCLI(t, args...)
	if code != 1 || !strings.Contains(errOut, "not confirmed") || !strings.Contains(errOut, "[y/N]") {
		t.Errorf("answer n: exit %d, %q", code, errOut)
	}
	if !strings.Contains(out, "+net.netfilter.nf_conntrack_max = 21504") || !strings.Contains(out, "live /sys/module/nf_conntrack/parameters/hashsize: 4096 -> 21504") {
		t.Errorf("the diff was not shown before asking:\n%s", out)
	}
	sameTree(t, before, snapshotTree(t, dir))

	withStdin(t, "y\n", true)
	out, errOut, code = runCLI(t, args...)
	if code != 0 || !strings.Contains(out, "applied: 3 file(s) written, 5 live value(s) set") {
		t.Fatalf("answer y: exit %d, %s\n%s", code, errOut, out)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"))
	if strings.TrimSpace(string(got)) != "8400" {
		t.Errorf("live established %q", got)
	}

	out, errOut, code = runCLI(t, append([]string{"tune", "--rollback", "--yes"}, roots...)...)
	if code != 0 || !strings.Contains(out, "rolled back: 3 file(s), 5 live value(s)") {
		t.Fatalf("rollback: exit %d, %s\n%s", code, errOut, out)
	}
	after := snapshotTree(t, dir)
	sameTree(t, before, after)

	_, errOut, code = runCLI(t, append([]string{"tune", "--rollback", "--yes"}, roots...)...)
	if code != 1 || !strings.Contains(errOut, "nothing applied") {
		t.Errorf("rollback without backup: exit %d, %q", code, errOut)
	}
}

func TestTuneKubeWarnings(t *testing.T) {
	_, roots := tuneFixture(t, "kube")
	out, errOut, code := runCLI(t, append([]string{"tune", "--apply", "--yes"}, roots...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"WARNING kube-proxy (process kube-proxy (pid 4242))",
		// kube-proxy owns the established timeout: a file setting it is
		// overwritten by kube-proxy, not by boot order against ctguard's.
		"/etc/sysctl.d/95-k8s-conntrack.conf:2 sets net.netfilter.nf_conntrack_tcp_timeout_established = 86400; kube-proxy overwrites it",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if !strings.Contains(errOut, "warning(s) above") {
		t.Errorf("apply did not point at the warnings: %q", errOut)
	}
}

// On a kube-proxy host --apply refuses the values kube-proxy sets at start,
// names the kube-proxy settings to change instead, and applies the rest.
func TestTuneKubeProxyRefuses(t *testing.T) {
	dir, roots := tuneFixture(t, "kube")
	out, errOut, code := runCLI(t, append([]string{"tune", "--apply", "--yes"}, roots...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, errOut, out)
	}
	for _, want := range []string{
		"kube-proxy settings (kube-proxy overwrites these sysctls when it starts; tune --apply leaves them to it):",
		"(flag --conntrack-max-per-core=104448)", "(flag --conntrack-min=417792)",
		"(flag --conntrack-tcp-timeout-established=2h20m0s)", "(flag --conntrack-tcp-timeout-close-wait=1h0m0s)",
		"not applied: net.netfilter.nf_conntrack_max = 417792: kube-proxy sets it when it starts",
		"not applied: net.netfilter.nf_conntrack_tcp_timeout_established = 8400: kube-proxy sets it when it starts",
		"live /proc/sys/net/netfilter/nf_conntrack_buckets: 32768 -> 417792",
		"applied: 2 file(s) written, 3 live value(s) set",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if !hasRow(out, "net.netfilter.nf_conntrack_max", "131072", "417792", "entries", "(set", "by", "kube-proxy)") {
		t.Error("max row does not say kube-proxy sets it")
	}
	if !strings.Contains(errOut, "2 recommended value(s) not applied: kube-proxy sets them") {
		t.Errorf("stderr %q", errOut)
	}
	for name, want := range map[string]string{"nf_conntrack_max": "131072", "nf_conntrack_tcp_timeout_established": "86400", "nf_conntrack_tcp_timeout_syn_recv": "30"} {
		got, _ := os.ReadFile(filepath.Join(dir, "proc/sys/net/netfilter", name))
		if strings.TrimSpace(string(got)) != want {
			t.Errorf("live %s = %q, want %s", name, got, want)
		}
	}
	// Again: only the refused items are left, and nothing changes.
	before := snapshotTree(t, dir)
	out, errOut, code = runCLI(t, append([]string{"tune", "--apply", "--yes"}, roots...)...)
	if code != 0 || !strings.Contains(errOut, "nothing else to apply") || strings.Contains(out, "applied:") {
		t.Errorf("second apply: exit %d\n%s\n%s", code, errOut, out)
	}
	sameTree(t, before, snapshotTree(t, dir))
}

// A Docker host (MASQUERADE and DNAT rules, DNAT'ed entries) whose own
// tcp_keepalive_time is 600 s: the established advice stays at the NAT floor,
// found from the rules or, without them, from the table's entries; a plain
// host with the same keepalive gets the lower value, and --nat-floor 0 is
// the operator's explicit way down.
func TestTuneDockerNATFloor(t *testing.T) {
	_, roots := tuneFixture(t, "docker")
	if roots[len(roots)-2] != "--rules" {
		t.Fatalf("docker fixture without rules: %v", roots)
	}
	noRules := roots[:len(roots)-2]
	for _, tc := range []struct {
		name  string
		args  []string
		want  string
		finds []string
	}{
		{"rules", roots, "8400", []string{"NAT: NAT rule iptables-save: -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE; established timeout floor 8400 s",
			"NAT floor: this host translates addresses", "fib daddr type local tcp dport"}},
		{"entries", noRules, "8400", []string{"NAT: 2 ESTABLISHED entries in the table have their address translated; established timeout floor 8400 s"}},
		{"floor off", append([]string{"--nat-floor", "0"}, roots...), "3600", []string{"NAT floor off (--nat-floor 0)"}},
		{"floor 1h", append([]string{"--nat-floor", "1h"}, roots...), "3600", []string{"established timeout floor 3600 s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, append([]string{"tune"}, tc.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			if !hasRow(out, "net.netfilter.nf_conntrack_tcp_timeout_established", "432000", tc.want, "s") {
				t.Errorf("established row: want %s", tc.want)
			}
			for _, s := range tc.finds {
				if !strings.Contains(out, s) {
					t.Errorf("output lacks %q", s)
				}
			}
			if t.Failed() {
				t.Log(out)
			}
		})
	}
	_, errOut, code := runCLI(t, append([]string{"tune", "--nat-floor", "-1s"}, roots...)...)
	if code != 2 || !strings.Contains(errOut, "--nat-floor") {
		t.Errorf("--nat-floor -1s: exit %d %q", code, errOut)
	}

	plain, plainRoots := tuneFixture(t, "incident-5.15")
	os.WriteFile(filepath.Join(plain, "proc/sys/net/ipv4/tcp_keepalive_time"), []byte("600\n"), 0o644)
	out, errOut, code := runCLI(t, append([]string{"tune"}, plainRoots...)...)
	if code != 0 || !hasRow(out, "net.netfilter.nf_conntrack_tcp_timeout_established", "432000", "3600", "s") ||
		strings.Contains(out, "\nNAT: ") || strings.Contains(out, "NAT floor") || strings.Contains(out, "fib daddr") {
		t.Errorf("plain host: exit %d %s\n%s", code, errOut, out)
	}
}

// --observe scans repeatedly (5 s apart at the shortest).
func TestTuneObserve(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 5 s")
	}
	_, roots := tuneFixture(t, "incident-5.15")
	out, errOut, code := runCLI(t, append([]string{"tune", "--observe", "6s"}, roots...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "observed: 2 scan(s) over 5s") || !strings.Contains(errOut, "scan 1: 10 entries") {
		t.Errorf("stdout:\n%s\nstderr:\n%s", out, errOut)
	}
}

func TestTuneWithoutLocalAddrs(t *testing.T) {
	dir, roots := tuneFixture(t, "incident-5.15")
	os.Remove(filepath.Join(dir, "proc/net/fib_trie"))
	out, errOut, code := runCLI(t, append([]string{"tune"}, roots...)...)
	if code != 0 || !strings.Contains(errOut, "counting all as inbound") || !strings.Contains(out, "inbound n=10 ") {
		t.Errorf("exit %d\nstderr %s\nstdout %s", code, errOut, out)
	}
}

// /dev/null is a character device but no terminal: tune must not prompt
// there (it refuses without --yes), and top --watch must not redraw.
func TestIsTerminal(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) {
		t.Fatal("/dev/null taken for a terminal")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if isTerminal(w) {
		t.Fatal("a pipe taken for a terminal")
	}
}
