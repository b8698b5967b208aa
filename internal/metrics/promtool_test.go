package metrics

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The packaged dashboard and alert rules, relative to this package.
const (
	promDir    = "../../packaging/prometheus"
	alertsFile = "ctguard-alerts.yml"
	alertsTest = "ctguard-alerts_test.yml"
	dashboard  = "../../packaging/grafana/ctguard-dashboard.json"
)

// promtool returns the path of promtool. Without it the test skips, but
// under CI=true it fails: CI installs it (Debian package prometheus).
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("promtool is not on PATH and CI=true: install it (Debian: apt-get install prometheus): %v", err)
		}
		t.Skip("promtool is not on PATH, skipping (Debian: apt-get install prometheus); under CI=true this fails")
	}
	return p
}

// runPromtool runs promtool in dir with stdin and returns its combined
// output.
func runPromtool(t *testing.T, dir string, stdin []byte, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, promtool(t), args...)
	cmd.Dir = dir
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		err = fmt.Errorf("promtool %s: %w", strings.Join(args, " "), err)
	}
	return string(out), err
}

// `promtool check metrics` has nothing to say about a scrape: names, types,
// units and HELP follow the conventions (the Go and process collectors'
// included), with every series present and with the optional ones left out.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool(t)
	for name, read := range map[string]func() State{
		"every series": fullState,
		"unknowns left out": func() State {
			s := fullState()
			s.GrowthPerSec, s.SecondsToFull, s.BanDrops = Inf, Inf, nil
			return s
		},
		"before the first scan": func() State { return State{} },
	} {
		body := scrape(t, read)
		out, err := runPromtool(t, ".", []byte(body), "check", "metrics")
		if err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("%s: promtool check metrics complains (%v):\n%s", name, err, out)
		}
	}
}

// The alert rules are valid and their unit tests pass.
func TestPromtoolRules(t *testing.T) {
	promtool(t)
	out, err := runPromtool(t, promDir, nil, "check", "rules", "--lint=all", "--lint-fatal", alertsFile)
	if err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	out, err = runPromtool(t, promDir, nil, "test", "rules", alertsTest)
	if err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules did not report SUCCESS:\n%s", out)
	}
}

// Every alert has a unit test where it fires and one where it must not.
func TestEveryAlertTested(t *testing.T) {
	rules, err := os.ReadFile(filepath.Join(promDir, alertsFile))
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(filepath.Join(promDir, alertsTest))
	if err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, m := range regexp.MustCompile(`(?m)^\s*- alert:\s*(\S+)\s*$`).FindAllStringSubmatch(string(rules), -1) {
		alerts = append(alerts, m[1])
	}
	if len(alerts) == 0 {
		t.Fatalf("no alerts found in %s", alertsFile)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	name := regexp.MustCompile(`(?m)^\s*alertname:\s*(\S+)\s*$`)
	// Each alert_rule_test case starts with its eval_time.
	for _, c := range strings.Split(string(tests), "- eval_time:")[1:] {
		m := name.FindStringSubmatch(c)
		if m == nil {
			t.Fatalf("a test case without alertname:\n%s", c)
		}
		switch {
		case regexp.MustCompile(`(?m)^\s*exp_alerts:\s*\[\]\s*$`).MatchString(c):
			quiet[m[1]] = true
		case strings.Contains(c, "exp_labels:"):
			fires[m[1]] = true
		default:
			t.Errorf("test case of %s expects neither alerts nor none", m[1])
		}
	}
	for _, a := range alerts {
		if !fires[a] {
			t.Errorf("alert %s has no test where it fires", a)
		}
		if !quiet[a] {
			t.Errorf("alert %s has no test where it stays quiet", a)
		}
		delete(fires, a)
		delete(quiet, a)
	}
	for a := range fires {
		t.Errorf("tests name an alert the rules lack: %s", a)
	}
	for a := range quiet {
		t.Errorf("tests name an alert the rules lack: %s", a)
	}
}

// exported lists the metric names a scrape serves, histograms with their
// _bucket, _sum and _count series.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (\S+) (\S+)$`).FindAllStringSubmatch(scrape(t, fullState), -1) {
		names[m[1]] = true
		if m[2] == "histogram" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				names[m[1]+suffix] = true
			}
		}
	}
	return names
}

// Every ctguard_* name in the dashboard and the alert rules (and their
// tests) is one the daemon exports.
func TestDashboardAndAlertsUseExportedMetrics(t *testing.T) {
	names := exported(t)
	used := regexp.MustCompile(`\bctguard_[a-z0-9_]*[a-z0-9]`)
	for _, f := range []string{dashboard, filepath.Join(promDir, alertsFile), filepath.Join(promDir, alertsTest)} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		found := used.FindAllString(string(b), -1)
		if len(found) == 0 {
			t.Errorf("%s names no ctguard_ metric", f)
		}
		slices.Sort(found)
		for _, n := range slices.Compact(found) {
			if !names[n] {
				t.Errorf("%s uses %s, which the daemon does not export", f, n)
			}
		}
	}
}

// dashboardExprs returns every PromQL expression of the dashboard (panel
// targets and template queries).
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			ID         int    `json:"id"`
			Title      string `json:"title"`
			Type       string `json:"type"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboard, err)
	}
	if d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("%s: no uid or no panels", dashboard)
	}
	var exprs []string
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the datasource variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			exprs = append(exprs, q.Expr)
		}
	}
	return exprs
}

// The dashboard's queries are valid PromQL: promtool checks them as
// recording rules, with Grafana's variables filled in.
func TestDashboardQueriesParse(t *testing.T) {
	exprs := dashboardExprs(t)
	promtool(t)
	vars := strings.NewReplacer("$__rate_interval", "1m", "$instance", ".+")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		q, err := json.Marshal(vars.Replace(e)) // a JSON string is a YAML one
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&rules, "      - record: dashboard:query_%d\n        expr: %s\n", i, q)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard.yml"), []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runPromtool(t, dir, nil, "check", "rules", "dashboard.yml"); err != nil {
		t.Fatalf("%v:\n%s\nrules:\n%s", err, out, rules.String())
	}
}
