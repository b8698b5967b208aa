package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs one command line in-process and returns stdout, stderr and
// the exit status.
func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), &env{stdout: &out, stderr: &errb}, args)
	return out.String(), errb.String(), code
}

func TestUsageErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string // in stderr
	}{
		{[]string{"nosuch"}, `unknown command "nosuch"`},
		{[]string{"status", "--sample", "-1s"}, "--sample -1s"},
		{[]string{"status", "--sample", "soon"}, `invalid argument "soon" for "--sample"`},
		{[]string{"status", "--reader", "magic"}, `--reader "magic"`},
		{[]string{"status", "extra"}, `unexpected argument "extra"`},
		{[]string{"top", "-n", "0"}, "--rows 0"},
		{[]string{"top", "--by", "bytes"}, `--by "bytes"`},
		{[]string{"top", "--watch", "1ms"}, "--watch 1ms"},
		{[]string{"top", "--v4-prefix", "33"}, "--v4-prefix 33"},
		{[]string{"top", "--v6-prefix", "8"}, "--v6-prefix 8"},
		{[]string{"top", "--idle-threshold", "0"}, "--idle-threshold 0"},
	}
	for _, c := range cases {
		out, errs, code := runCLI(t, c.args...)
		if code != 2 || !strings.Contains(errs, c.want) || out != "" {
			t.Errorf("%v: exit %d, stderr %q, stdout %q; want exit 2 and %q", c.args, code, errs, out, c.want)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	if _, errs, code := runCLI(t); code != 2 || !strings.Contains(errs, "Available Commands:") {
		t.Errorf("no args: exit %d, %q", code, errs)
	}
	// Asked-for help goes to stdout, in GNU style, without the test-only
	// flags; help CMD is the command's help.
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}} {
		if out, errs, code := runCLI(t, args...); code != 0 || !strings.Contains(out, "status") || !strings.Contains(out, "top") || errs != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
	if out, _, code := runCLI(t, "version"); code != 0 || !strings.HasPrefix(out, "ctguard ") || !strings.Contains(out, "go1.") {
		t.Errorf("version: exit %d, %q", code, out)
	}
	out, _, code := runCLI(t, "version", "--json")
	var bi buildInfo
	if code != 0 || json.Unmarshal([]byte(out), &bi) != nil || bi.Version == "" || !strings.HasPrefix(bi.Go, "go1.") {
		t.Errorf("version --json: exit %d, %q", code, out)
	}
	for _, args := range [][]string{{"top", "-h"}, {"top", "--help"}, {"help", "top"}} {
		out, errs, code := runCLI(t, args...)
		if code != 0 || !strings.Contains(out, "Usage:\n  ctguard top") || !strings.Contains(out, "  --by ") || errs != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
		if strings.Contains(out, "--procfs") || strings.Contains(out, "\n  -by") {
			t.Errorf("%v shows a test-only flag or a single-dash flag:\n%s", args, out)
		}
	}
	if out, _, _ := runCLI(t, "help", "tune"); strings.Contains(out, "--sysfs") || strings.Contains(out, "--etc") || !strings.Contains(out, "--apply") {
		t.Errorf("help tune:\n%s", out)
	}
	if _, errs, code := runCLI(t, "help", "nope"); code != 2 || !strings.Contains(errs, `unknown command "nope"`) {
		t.Errorf("help nope: exit %d, %q", code, errs)
	}
	if _, errs, code := runCLI(t, "ban", "--nope"); code != 2 || !strings.Contains(errs, "see 'ctguard help ban'") || strings.Count(errs, "ctguard ban:") != 1 {
		t.Errorf("unknown flag: exit %d, %q", code, errs)
	}
}

func TestNoConntrack(t *testing.T) {
	// A procfs root without conntrack sysctls: conntrack is not loaded.
	_, errs, code := runCLI(t, "status", "--procfs", t.TempDir(), "--sample", "0")
	if code != 1 || !strings.Contains(errs, "conntrack is not available") {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
}

// config check: every problem with its line, a suggestion for a typo,
// exit 2; a valid file exits 0. config show prints the merged TOML.
func TestConfigCheckAndShow(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[daemon]\npol = \"1s\"\n[policy]\nhigh_fill = 2.0\n"), 0o644)
	out, errs, code := runCLI(t, "config", "check", bad)
	if code != 2 || out != "" || !strings.Contains(errs, bad+":2: unknown key daemon.pol (did you mean daemon.poll?)") ||
		!strings.Contains(errs, bad+":4: policy.high_fill = 2: want a ratio") || !strings.Contains(errs, "3 problems") {
		t.Errorf("check of a bad file: exit %d\nstdout %q\nstderr %s", code, out, errs)
	}
	out, _, code = runCLI(t, "config", "check", bad, "--json")
	var cj checkJSON
	if code != 2 || json.Unmarshal([]byte(out), &cj) != nil || cj.Valid || len(cj.Problems) != 3 || cj.Problems[1].Line != 2 || cj.Problems[1].Key != "daemon.pol" || cj.Command != "config check" {
		t.Errorf("check --json of a bad file: exit %d\n%s", code, out)
	}
	good := filepath.Join(dir, "good.toml")
	os.WriteFile(good, []byte("[daemon]\npoll = \"500ms\"\n"), 0o644)
	if out, errs, code := runCLI(t, "config", "check", good); code != 0 || !strings.Contains(out, good+": ok") {
		t.Errorf("check of a good file: exit %d %q %q", code, out, errs)
	}
	if _, errs, code := runCLI(t, "config", "check", filepath.Join(dir, "missing.toml")); code != 2 || !strings.Contains(errs, "missing.toml") {
		t.Errorf("check of a missing file: exit %d %q", code, errs)
	}
	out, _, code = runCLI(t, "config", "show", good)
	if code != 0 || !strings.Contains(out, `poll = "500ms"`) || !strings.Contains(out, `interval = ["30s", "5s", "2s", "1s"]`) || !strings.Contains(out, "[policy.weights]") {
		t.Errorf("show: exit %d\n%s", code, out)
	}
	secret := filepath.Join(dir, "secret.toml")
	os.WriteFile(secret, []byte("[crowdsec]\npassword = \"hunter2\"\napi_key = \"k3y\"\n"), 0o644)
	if out, _, code := runCLI(t, "config", "show", secret); code != 0 || strings.Contains(out, "hunter2") || strings.Contains(out, "k3y") ||
		!strings.Contains(out, `password = "[redacted]"`) {
		t.Errorf("config show does not redact the secrets: exit %d\n%s", code, out)
	}
	if _, errs, code := runCLI(t, "config", "frob"); code != 2 || !strings.Contains(errs, `unknown command "frob": want check or show`) {
		t.Errorf("config frob: exit %d %q", code, errs)
	}
}

// The shell completion works, not just loads: cobra's __complete (what the
// generated scripts call) offers ban for "ba", ban's flags for "ban --" and
// the values of --by.
func TestCompletion(t *testing.T) {
	out, _, code := runCLI(t, "__complete", "ba")
	if code != 0 || !strings.Contains(out, "ban\t") || strings.Contains(out, "top") {
		t.Errorf("__complete ba: exit %d\n%s", code, out)
	}
	out, _, _ = runCLI(t, "__complete", "ban", "--")
	for _, f := range []string{"--ttl\t", "--from\t", "--reason\t", "--json\t"} {
		if !strings.Contains(out, f) {
			t.Errorf("__complete ban --: no %s\n%s", f, out)
		}
	}
	if strings.Contains(out, "--procfs") || strings.Contains(out, "--resolv-conf") {
		t.Errorf("__complete offers a test-only flag:\n%s", out)
	}
	out, _, _ = runCLI(t, "__complete", "top", "--by", "")
	if !strings.Contains(out, "held\n") || !strings.Contains(out, "halfopen\n") {
		t.Errorf("__complete top --by: %s", out)
	}
	out, _, _ = runCLI(t, "__complete", "config", "")
	if !strings.Contains(out, "check\t") || !strings.Contains(out, "show\t") {
		t.Errorf("__complete config: %s", out)
	}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		out, _, code := runCLI(t, "completion", sh)
		if code != 0 || !strings.Contains(out, "__complete") {
			t.Errorf("completion %s: exit %d, %d bytes", sh, code, len(out))
		}
	}
	if sh, err := exec.LookPath("bash"); err == nil {
		// The bash script loads and registers its function.
		script, _, _ := runCLI(t, "completion", "bash")
		f := filepath.Join(t.TempDir(), "ctguard.bash")
		os.WriteFile(f, []byte(script), 0o644)
		out, err := exec.Command(sh, "-c", "source "+f+" && complete -p ctguard").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "ctguard") {
			t.Errorf("bash completion does not load: %v\n%s", err, out)
		}
	}
}

// Every man page generated from the command tree renders with man -l.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	if _, errs, code := runCLI(t, "gen-man", dir); code != 0 {
		t.Fatalf("gen-man: exit %d %s", code, errs)
	}
	pages, _ := filepath.Glob(filepath.Join(dir, "*.8"))
	want := []string{"ctguard.8", "ctguard-ban.8", "ctguard-config-check.8", "ctguard-why.8", "ctguard-completion-bash.8"}
	for _, w := range want {
		if _, err := os.Stat(filepath.Join(dir, w)); err != nil {
			t.Errorf("no %s among %v", w, pages)
		}
	}
	man, err := exec.LookPath("man")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("man is not installed (apt-get install man-db)")
		}
		t.Skip("man is not installed: pages generated but not rendered")
	}
	for _, p := range pages {
		cmd := exec.Command(man, "-l", p)
		cmd.Env = append(os.Environ(), "MANPAGER=cat", "PAGER=cat", "MANWIDTH=100")
		out, err := cmd.Output()
		if err != nil || !strings.Contains(string(out), "NAME") || !strings.Contains(string(out), "SYNOPSIS") {
			t.Errorf("man -l %s: %v\n%s", p, err, out)
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "ctguard-ban.8"))
	if !strings.Contains(string(b), "ttl") || !strings.Contains(string(b), "EXAMPLE") || strings.Contains(string(b), "procfs") {
		t.Errorf("ctguard-ban.8 lacks its flags or examples, or shows a test-only flag:\n%s", b)
	}
}

// A --config that names a missing file is an error (exit 2, the file
// named, nothing changed), never a silent fallback to the defaults; every
// command that can work without a daemon takes it.
func TestConfigFlagEverywhere(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.toml")
	for _, args := range [][]string{{"status", "--sample", "0"}, {"top"}, {"list"}, {"ban", "192.0.2.7"}, {"unban", "192.0.2.7"},
		{"allow", "192.0.2.7"}, {"purge", "192.0.2.7"}, {"why", "192.0.2.7"}, {"run"}} {
		geteuid = func() int { return 0 }
		_, errs, code := runCLI(t, append(args, "--config", missing, "--socket", "/nonexistent/x.sock")...)
		geteuid = os.Geteuid
		if code != 2 || !strings.Contains(errs, "missing.toml") {
			t.Errorf("%v --config missing: exit %d %s", args, code, errs)
		}
	}
	root := newRoot(&env{stdout: io.Discard, stderr: io.Discard})
	for _, c := range root.Commands() {
		switch c.Name() {
		case "help", "version", "completion", "config", "tune", "gen-man":
			continue
		}
		if c.Flags().Lookup("config") == nil {
			t.Errorf("%s has no --config", c.Name())
		}
	}
}
