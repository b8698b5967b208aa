package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/daemon"
	"github.com/ctguard/ctguard/internal/testutil"
)

// syncBuf is a goroutine-safe log buffer.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// self runs this test binary as `ctguard args...` inside ns.
func self(ns *testutil.NS, args ...string) *exec.Cmd {
	exe, _ := os.Executable()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, exe}, args...)...)
	for _, kv := range os.Environ() {
		// TestMain points $CTGUARD_SOCKET nowhere for the commands; a
		// daemon under test listens where its config says.
		if len(args) > 0 && args[0] == "run" && strings.HasPrefix(kv, "CTGUARD_SOCKET=") {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, "CTGUARD_TEST_MAIN=1")
	return cmd
}

// daemonLab is a namespace with a stateful rule and synthetic entries: a
// bot holding 150 idle entries and a NAT-like source holding 30 fresh ones.
func daemonLab(t *testing.T) (*testutil.NS, *conntrack.Conn) {
	testutil.RequireRoot(t, "nft", "conntrack", "ip")
	ns := testutil.NewNS(t)
	ns.MustRun(t, "ip", "addr", "add", "192.0.2.10/24", "dev", "lo")
	ns.MustRun(t, "nft", "add table inet lab; add chain inet lab in { type filter hook input priority 0; }; add rule inet lab in ct state established accept")
	var c *conntrack.Conn
	var err error
	ns.Do(t, func() { c, err = conntrack.Open() })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	dst := netip.MustParseAddr("192.0.2.10")
	mk := func(src string, n int, timeout uint32) []conntrack.Entry {
		s := netip.MustParseAddr(src)
		var es []conntrack.Entry
		for i := range n {
			p := uint16(20000 + i)
			es = append(es, conntrack.Entry{Proto: conntrack.ProtoTCP, Orig: conntrack.Tuple{Src: s, Dst: dst, SrcPort: p, DstPort: 443},
				Reply:  conntrack.Tuple{Src: dst, Dst: s, SrcPort: 443, DstPort: p},
				Status: conntrack.StatusConfirmed | conntrack.StatusSeenReply | conntrack.StatusAssured, Timeout: timeout,
				TCPState: conntrack.TCPEstablished, HasTCPState: true})
		}
		return es
	}
	es := append(mk("203.0.113.110", 150, 431000), mk("198.51.100.7", 30, 431990)...)
	if n, err := c.Create(context.Background(), es); err != nil || n != len(es) {
		t.Fatalf("create: %d %v", n, err)
	}
	return ns, c
}

func writeConfig(t *testing.T, dir, extra string) string {
	p := filepath.Join(dir, "ctguard.toml")
	body := fmt.Sprintf("[daemon]\nstate_dir = %q\nsocket = %q\npoll = \"200ms\"\ninterval = [\"1s\", \"1s\", \"500ms\", \"500ms\"]\n%s", filepath.Join(dir, "state"), filepath.Join(dir, "ctguard.sock"), extra)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func startDaemon(t *testing.T, ns *testutil.NS, args ...string) (*syncBuf, *exec.Cmd) {
	return startLogged(t, self(ns, append([]string{"run"}, args...)...))
}

// stopProcess ends a process the test started: SIGTERM, then SIGKILL
// after 5 s.
func stopProcess(cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// startLogged starts cmd with its output in a log that a failing test
// prints, and stops it (SIGTERM, then SIGKILL after 5 s) at the end.
func startLogged(t *testing.T, cmd *exec.Cmd) (*syncBuf, *exec.Cmd) {
	var log syncBuf
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stopProcess(cmd)
		if t.Failed() {
			t.Logf("daemon log:\n%s", log.String())
		}
	})
	return &log, cmd
}

func mustRead(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if cond() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
}

func count(t *testing.T, c *conntrack.Conn, p string) int {
	n, err := c.CountSource(context.Background(), netip.MustParsePrefix(p))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRootRunBansPurgesExplains(t *testing.T) {
	ns, c := daemonLab(t)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, "")
	log, cmd := startDaemon(t, ns, "--config", cfg)
	waitFor(t, "the bot's ban", 10*time.Second, func() bool { return strings.Contains(log.String(), "action=ban target=203.0.113.110/32") })
	if n := count(t, c, "203.0.113.110/32"); n != 0 {
		t.Errorf("the bot still holds %d entries", n)
	}
	if n := count(t, c, "198.51.100.7/32"); n != 30 {
		t.Errorf("the NAT-like source holds %d entries, want its 30 untouched", n)
	}
	set := ns.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4")
	if !strings.Contains(set, "203.0.113.110") || strings.Contains(set, "198.51.100.7") {
		t.Errorf("ban4 set:\n%s", set)
	}

	// The control socket: why, list, and a manual ban through the daemon.
	sock := filepath.Join(dir, "ctguard.sock")
	out, err := self(ns, "why", "203.0.113.110", "--json", "--socket", sock).CombinedOutput()
	if err != nil {
		t.Fatalf("why: %v\n%s", err, out)
	}
	var why daemon.WhyReply
	if err := json.Unmarshal(out, &why); err != nil {
		t.Fatal(err)
	}
	if len(why.Bans) != 1 || why.Bans[0].Purged != 150 || why.Bans[0].Remaining != 0 || len(why.Events) == 0 ||
		why.Events[0].Action != "ban" || why.Threshold != 100 || !strings.Contains(why.Bans[0].Evidence, "150 entries") ||
		!strings.HasPrefix(why.Verdict, "BANNED: 203.0.113.110/32 by the policy") {
		t.Errorf("why: %s", out)
	}
	out, err = self(ns, "why", "198.51.100.7", "--socket", sock).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "30 entries") || !strings.Contains(string(out), "bans         none on record") ||
		!strings.Contains(string(out), "verdict      not banned: score 30.0 under the threshold 100") {
		t.Errorf("why for the spared source: %v\n%s", err, out)
	}

	// Bulk bans and unbans through the daemon: one request each.
	list := filepath.Join(dir, "targets.txt")
	os.WriteFile(list, []byte("198.51.100.50\n198.51.100.51\n"), 0o644)
	if out, err := self(ns, "ban", "--from", list, "--socket", sock).CombinedOutput(); err != nil || !strings.Contains(string(out), "banned 2 of 2") {
		t.Errorf("ban --from through the daemon: %v\n%s", err, out)
	}
	if set := ns.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4"); !strings.Contains(set, "198.51.100.50") || !strings.Contains(set, "198.51.100.51") {
		t.Errorf("bulk ban not in the kernel:\n%s", set)
	}
	if out, err := self(ns, "unban", "--from", list, "--socket", sock).CombinedOutput(); err != nil || !strings.Contains(string(out), "unbanned 2 of 2") {
		t.Errorf("unban --from through the daemon: %v\n%s", err, out)
	}

	// status and top answer from the daemon's last scan.
	waitFor(t, "status through the daemon to count 30 entries", 5*time.Second, func() bool {
		out, err := self(ns, "status", "--json", "--socket", sock).CombinedOutput()
		var st map[string]any
		return err == nil && json.Unmarshal(out, &st) == nil && st["daemon"] != nil && st["count"] == float64(30)
	})
	// (The scan that led to the ban still shows the bot; the next one not.)
	waitFor(t, "top through the daemon to show only the spared source", 5*time.Second, func() bool {
		out, err := self(ns, "top", "--json", "--socket", sock).CombinedOutput()
		var top topJSON
		return err == nil && json.Unmarshal(out, &top) == nil && len(top.Rows) == 1 && top.Rows[0].Source == "198.51.100.7" && top.Rows[0].Entries == 30
	})

	// Flushing the ruleset is healed within an interval, ban included.
	ns.MustRun(t, "nft", "flush", "ruleset")
	waitFor(t, "the table rebuilt after nft flush ruleset", 10*time.Second, func() bool {
		out, err := ns.Run("nft", "list", "set", "inet", "ctguard", "ban4")
		return err == nil && strings.Contains(out, "203.0.113.110")
	})

	// SIGHUP reloads the allowlist: a newly allowed heavy holder is spared.
	os.WriteFile(cfg, []byte(strings.Replace(mustRead(t, cfg), "[daemon]", "[allow]\naddresses = [\"203.0.113.120\"]\n\n[daemon]", 1)), 0o644)
	cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the reload", 5*time.Second, func() bool { return strings.Contains(log.String(), "msg=reloaded") })
	heavy := make([]conntrack.Entry, 150)
	for i := range heavy {
		src, dst, p := netip.MustParseAddr("203.0.113.120"), netip.MustParseAddr("192.0.2.10"), uint16(30000+i)
		heavy[i] = conntrack.Entry{Proto: conntrack.ProtoTCP, Orig: conntrack.Tuple{Src: src, Dst: dst, SrcPort: p, DstPort: 443},
			Reply:  conntrack.Tuple{Src: dst, Dst: src, SrcPort: 443, DstPort: p},
			Status: conntrack.StatusConfirmed | conntrack.StatusSeenReply | conntrack.StatusAssured, Timeout: 431000,
			TCPState: conntrack.TCPEstablished, HasTCPState: true}
	}
	if n, err := c.Create(context.Background(), heavy); err != nil || n != 150 {
		t.Fatalf("create: %d %v", n, err)
	}
	waitFor(t, "the allowlisted holder to be spared", 5*time.Second, func() bool {
		return strings.Contains(log.String(), `msg="not banned" target=203.0.113.120/32`)
	})
	if n := count(t, c, "203.0.113.120/32"); n != 150 {
		t.Errorf("the allowlisted source lost entries: %d left", n)
	}

	// SIGHUP reloads; a broken config is refused and the old one kept.
	os.WriteFile(cfg, []byte("[daemon]\npoll = \"nope\"\n"), 0o644)
	cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the rejected reload", 5*time.Second, func() bool { return strings.Contains(log.String(), "config rejected") })
}

func TestRootRunDryRun(t *testing.T) {
	ns, c := daemonLab(t)
	dir := t.TempDir()
	log, _ := startDaemon(t, ns, "--config", writeConfig(t, dir, ""), "--dry-run")
	waitFor(t, "the would-be ban", 10*time.Second, func() bool { return strings.Contains(log.String(), "action=would-ban target=203.0.113.110/32") })
	if n := count(t, c, "203.0.113.110/32"); n != 150 {
		t.Errorf("dry run deleted entries: the bot holds %d, want 150", n)
	}
	if out, err := ns.Run("nft", "list", "table", "inet", "ctguard"); err == nil {
		t.Errorf("dry run created ctguard's table:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
		t.Errorf("dry run created the real state directory")
	}
	// A manual ban through the dry-run daemon says what it would do, never
	// that it banned or purged.
	sock := filepath.Join(dir, "ctguard.sock")
	out, err := self(ns, "ban", "198.51.100.7", "--ttl", "30m", "--socket", sock).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "would ban 198.51.100.7/32 for 30m") || !strings.Contains(string(out), "would purge 30 conntrack entries") ||
		strings.Contains(string(out), "banned") || strings.Contains(string(out), "purged") || !strings.Contains(string(out), "dry run") {
		t.Errorf("ban through a dry-run daemon: %v\n%s", err, out)
	}
	if n := count(t, c, "198.51.100.7/32"); n != 30 {
		t.Errorf("the dry-run ban purged: %d entries left of 30", n)
	}
	for _, args := range [][]string{{"purge", "198.51.100.7"}, {"unban", "198.51.100.7"}} {
		out, err := self(ns, append(args, "--socket", sock)...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "would "+args[0]) || !strings.Contains(string(out), "dry run") {
			t.Errorf("%s through a dry-run daemon: %v\n%s", args[0], err, out)
		}
	}
	waitFor(t, "the log line of the manual ban", 5*time.Second, func() bool { return strings.Contains(log.String(), `msg="would ban" prefix=198.51.100.7/32`) })
	if strings.Contains(log.String(), "entries remain after ban") || strings.Contains(log.String(), "msg=banned") {
		t.Errorf("the dry-run daemon's log claims a ban or a failed purge:\n%s", log.String())
	}
}

func TestRunBadConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(p, []byte("[policy]\nthreshold = [1, 2, 3, 4]\n"), 0o644)
	_, errs, code := runCLI(t, "run", "--config", p)
	if code != 2 || !strings.Contains(errs, p) || strings.Count(errs, "threshold") != 1 {
		t.Errorf("exit %d: %s", code, errs)
	}
	_, errs, code = runCLI(t, "why", "not-an-ip")
	if code != 2 || !strings.Contains(errs, `"not-an-ip" is not an IP address`) {
		t.Errorf("why bad addr: exit %d: %s", code, errs)
	}
}

// Without a daemon, why scans once and says what a cycle on that scan
// would do, with the store's bans and the configuration's allowlist.
func TestRootWhyWithoutDaemon(t *testing.T) {
	ns, _ := daemonLab(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "ctguard.toml")
	os.WriteFile(cfg, []byte("[allow]\naddresses = [\"198.51.100.0/28\"]\n"), 0o644)
	why := func(args ...string) (string, error) {
		out, err := self(ns, append([]string{"why", "--socket", filepath.Join(dir, "none.sock"), "--state-dir", filepath.Join(dir, "state"), "--config", cfg}, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := why("203.0.113.110")
	if err != nil || !strings.Contains(out, "no daemon") || !strings.Contains(out, "150 entries") ||
		!strings.Contains(out, "verdict      would be banned: a cycle on this scan bans 203.0.113.110/32 (source-score, score 150.0") {
		t.Errorf("why of the bot without a daemon: %v\n%s", err, out)
	}
	out, err = why("198.51.100.7")
	if err != nil || !strings.Contains(out, "verdict      never banned: allowlisted (198.51.100.0/28") {
		t.Errorf("why of an allowlisted source without a daemon: %v\n%s", err, out)
	}
	out, err = why("203.0.113.110", "--json")
	var r whyJSON
	if err != nil || json.Unmarshal([]byte(out), &r) != nil || !r.Offline || r.Command != "why" || !strings.HasPrefix(r.Verdict, "would be banned") {
		t.Errorf("why --json without a daemon: %v\n%s", err, out)
	}
	// Nothing was changed: no ban in the kernel.
	if set, _ := ns.Run("nft", "list", "table", "inet", "ctguard"); strings.Contains(set, "203.0.113.110") {
		t.Errorf("why banned:\n%s", set)
	}
	// A --config that does not exist is an error, not the defaults.
	if out, err := self(ns, "why", "203.0.113.110", "--socket", filepath.Join(dir, "none.sock"), "--config", filepath.Join(dir, "missing.toml")).CombinedOutput(); err == nil || !strings.Contains(string(out), "missing.toml") {
		t.Errorf("why --config missing: %v\n%s", err, out)
	}
}

// A real scrape of a daemon that banned: promtool check metrics has no
// complaint, and every metric the dashboard and the alert rules use is in it.
// The CrowdSec link is on, towards a port where no LAPI listens, so that its
// series (failures, queued alerts) are there too.
func TestRootMetricsScrape(t *testing.T) {
	ns, _ := daemonLab(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "password"), []byte("pw\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "key"), []byte("key\n"), 0o600)
	cfg := writeConfig(t, dir, fmt.Sprintf("[metrics]\nlisten = \"127.0.0.1:9777\"\n\n[crowdsec]\nurl = \"http://127.0.0.1:9/\"\npush = true\npassword_file = %q\npull = true\napi_key_file = %q\n",
		filepath.Join(dir, "password"), filepath.Join(dir, "key")))
	log, _ := startDaemon(t, ns, "--config", cfg)
	waitFor(t, "the bot's ban", 10*time.Second, func() bool { return strings.Contains(log.String(), "action=ban target=203.0.113.110/32") })
	var body string
	waitFor(t, "a scrape after the ban", 10*time.Second, func() bool {
		var err error
		body, err = ns.Output("bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9777 && printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && cat <&3")
		// Growth appears once two count samples are known.
		return err == nil && strings.Contains(body, "ctguard_bans_total") && strings.Contains(body, "ctguard_conntrack_growth_per_second") &&
			strings.Contains(body, `ctguard_crowdsec_failures{direction="push"} `)
	})
	_, metrics, _ := strings.Cut(body, "\r\n\r\n")
	for _, want := range []string{"ctguard_build_info{", "ctguard_scan_duration_seconds_bucket", "ctguard_pressure_state{level=\"calm\"}",
		"ctguard_banned_packets_dropped_total", "go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if testutil.InCI() {
			t.Fatal("promtool is not installed (apt-get install prometheus)")
		}
		t.Skip("promtool is not installed: scrape not linted")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(metrics)
	if out, err := cmd.CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("promtool check metrics on a real scrape: %v\n%s", err, out)
	}
	// Every ctguard_ name used by the dashboard and the rules is scraped.
	used := map[string]bool{}
	for _, f := range []string{"../../packaging/grafana/ctguard-dashboard.json", "../../packaging/prometheus/ctguard-alerts.yml"} {
		for _, m := range regexp.MustCompile(`ctguard_[a-z_]+`).FindAllString(mustRead(t, f), -1) {
			used[m] = true
		}
	}
	for m := range used {
		if m == "ctguard_conntrack_seconds_to_full" {
			continue // absent while the table is not growing (README, Metrics), as here after the purge
		}
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
		if !strings.Contains(metrics, "\n"+m) && !strings.Contains(metrics, "\n"+base) && !strings.Contains(metrics, "# HELP "+base+" ") {
			t.Errorf("%s is used by the dashboard or the alerts but not in a real scrape", m)
		}
	}
}

// enforce.backend: ipset puts the bans in ctguard's ipsets with a drop rule
// in the raw table before conntrack, and status says which backend and
// why; auto picks nftables on this kernel.
func TestRootRunIPSetBackend(t *testing.T) {
	testutil.RequireRoot(t, "ipset", "iptables-restore", "ip6tables-restore")
	for _, want := range []string{"ipset", "auto"} {
		t.Run(want, func(t *testing.T) {
			ns, c := daemonLab(t)
			dir := t.TempDir()
			cfg := writeConfig(t, dir, fmt.Sprintf("[enforce]\nbackend = %q\n", want))
			log, _ := startDaemon(t, ns, "--config", cfg)
			waitFor(t, "the bot's ban", 10*time.Second, func() bool { return strings.Contains(log.String(), "action=ban target=203.0.113.110/32") })
			if n := count(t, c, "203.0.113.110/32"); n != 0 {
				t.Errorf("the bot still holds %d entries", n)
			}
			out, err := self(ns, "status", "--socket", filepath.Join(dir, "ctguard.sock"), "--sample", "0").CombinedOutput()
			chosen := map[string]string{"ipset": "ipset", "auto": "nftables"}[want]
			if err != nil || !strings.Contains(string(out), "enforcing with "+chosen) || !strings.Contains(string(out), "firewall backend "+chosen+": ") {
				t.Errorf("status with backend %s: %v\n%s", want, err, out)
			}
			set, _ := ns.Run("ipset", "list", "ctguard-ban4")
			raw, _ := ns.Run("iptables-save", "-t", "raw")
			if want == "ipset" {
				if !strings.Contains(set, "203.0.113.110") || !strings.Contains(raw, "CTGUARD") {
					t.Errorf("the ban is not in ctguard's ipset with its raw rule:\n%s\n%s", set, raw)
				}
				if tbl, _ := ns.Run("nft", "list", "table", "inet", "ctguard"); strings.Contains(tbl, "203.0.113.110") {
					t.Errorf("ipset backend also banned in nftables:\n%s", tbl)
				}
			} else if tbl := ns.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4"); !strings.Contains(tbl, "203.0.113.110") {
				t.Errorf("auto did not ban in nftables:\n%s", tbl)
			}
		})
	}
}

// The CrowdSec link against a fake Local API in the namespace: the policy's
// ban goes up as an alert; the LAPI's range decision is banned (purged,
// origin crowdsec, never counted toward ctguard's own prefix bans), one on
// an allowlisted address is refused, and a deletion at the LAPI lifts the
// pulled ban and only it.
func TestRootCrowdSecLink(t *testing.T) {
	ns, c := daemonLab(t)
	dir := t.TempDir()
	var mu sync.Mutex
	var alerts []map[string]any
	deleteNow, logins := false, 0
	decision := func(id int, scope, value, scenario string) string {
		return fmt.Sprintf(`{"id":%d,"origin":"cscli","type":"ban","scope":%q,"value":%q,"duration":"3h59m50s","scenario":%q}`, id, scope, value, scenario)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/watchers/login", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		logins++
		mu.Unlock()
		fmt.Fprintf(w, `{"code":200,"expire":%q,"token":"tok"}`, time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	})
	mux.HandleFunc("POST /v1/alerts", func(w http.ResponseWriter, r *http.Request) {
		var got []map[string]any
		if r.Header.Get("Authorization") != "Bearer tok" || json.NewDecoder(r.Body).Decode(&got) != nil {
			http.Error(w, `{"message":"bad"}`, http.StatusBadRequest)
			return
		}
		mu.Lock()
		alerts = append(alerts, got...)
		mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, `["1"]`)
	})
	mux.HandleFunc("GET /v1/decisions/stream", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Api-Key") != "key" {
			http.Error(w, `{"message":"forbidden"}`, http.StatusForbidden)
			return
		}
		mu.Lock()
		del := deleteNow
		mu.Unlock()
		switch {
		case r.URL.Query().Get("startup") == "true":
			fmt.Fprintf(w, `{"new":[%s,%s],"deleted":null}`, decision(1, "Range", "198.51.100.0/24", "crowdsecurity/http-probing"),
				decision(2, "Ip", "192.0.2.10", "crowdsecurity/ssh-bf"))
		case del:
			fmt.Fprintf(w, `{"new":null,"deleted":[%s]}`, decision(1, "Range", "198.51.100.0/24", "crowdsecurity/http-probing"))
		default:
			fmt.Fprint(w, `{"new":null,"deleted":null}`)
		}
	})
	var ln net.Listener
	ns.Do(t, func() {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:18080"); err != nil {
			t.Fatal(err)
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	os.WriteFile(filepath.Join(dir, "password"), []byte("secret-pw\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "key"), []byte("key\n"), 0o600)
	cfg := writeConfig(t, dir, fmt.Sprintf(`[crowdsec]
url = "http://127.0.0.1:18080/"
push = true
password_file = %q
pull = true
api_key_file = %q
pull_interval = "1s"
`, filepath.Join(dir, "password"), filepath.Join(dir, "key")))
	log, _ := startDaemon(t, ns, "--config", cfg)
	sock := filepath.Join(dir, "ctguard.sock")

	waitFor(t, "the LAPI's range banned", 10*time.Second, func() bool {
		set, _ := ns.Run("nft", "list", "set", "inet", "ctguard", "net4")
		return strings.Contains(set, "198.51.100.0/24")
	})
	// The purge follows the kernel change: the set can hold the range a
	// moment before its entries are gone.
	waitFor(t, "the pulled range's entries purged", 5*time.Second, func() bool { return count(t, c, "198.51.100.0/24") == 0 })
	waitFor(t, "the bot's ban pushed as an alert", 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, a := range alerts {
			if a["scenario"] == "ctguard/conntrack-holder" && strings.Contains(fmt.Sprint(a["decisions"]), "203.0.113.110") {
				return true
			}
		}
		return false
	})
	if !strings.Contains(log.String(), `msg="crowdsec decision refused: the allowlist covers it" prefix=192.0.2.10/32`) {
		t.Errorf("the decision on an allowlisted local address was not refused:\n%s", log.String())
	}
	if strings.Contains(log.String(), "secret-pw") {
		t.Error("the password is in the log")
	}
	out, err := self(ns, "why", "198.51.100.7", "--socket", sock).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "BANNED: 198.51.100.0/24 from CrowdSec's Local API (crowdsec: crowdsecurity/http-probing)") {
		t.Errorf("why of an address in the pulled range: %v\n%s", err, out)
	}
	out, err = self(ns, "status", "--socket", sock, "--sample", "0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "pull: 2 decisions held") || !strings.Contains(string(out), "push: ") {
		t.Errorf("status does not show the link: %v\n%s", err, out)
	}

	// A deletion at the LAPI lifts the pulled ban, and only it.
	mu.Lock()
	deleteNow = true
	mu.Unlock()
	waitFor(t, "the deleted decision lifted", 10*time.Second, func() bool {
		set, _ := ns.Run("nft", "list", "set", "inet", "ctguard", "net4")
		return !strings.Contains(set, "198.51.100.0/24")
	})
	if set := ns.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4"); !strings.Contains(set, "203.0.113.110") {
		t.Errorf("ctguard's own ban went with the LAPI's deletion:\n%s", set)
	}
}

// enforce.export_set: every ban also goes into the host's own ipset (with
// its timeout) and leaves it when lifted; a set without timeout support is
// refused with an error in the log, and the daemon bans all the same.
func TestRootExportSet(t *testing.T) {
	testutil.RequireRoot(t, "ipset")
	ns, _ := daemonLab(t)
	dir := t.TempDir()
	ns.MustRun(t, "ipset", "create", "blacklist1", "hash:net", "timeout", "0")
	ns.MustRun(t, "ipset", "add", "blacklist1", "192.0.2.99") // the host's own entry: left alone
	cfg := writeConfig(t, dir, "[enforce]\nexport_set = \"blacklist1\"\n")
	log, _ := startDaemon(t, ns, "--config", cfg)
	waitFor(t, "the bot's ban exported", 10*time.Second, func() bool {
		out, _ := ns.Run("ipset", "list", "blacklist1")
		return strings.Contains(out, "203.0.113.110 timeout ")
	})
	sock := filepath.Join(dir, "ctguard.sock")
	if out, err := self(ns, "unban", "203.0.113.110", "--socket", sock).CombinedOutput(); err != nil {
		t.Fatalf("unban: %v\n%s", err, out)
	}
	out := ns.MustRun(t, "ipset", "list", "blacklist1")
	if strings.Contains(out, "203.0.113.110") || !strings.Contains(out, "192.0.2.99") {
		t.Errorf("after the unban the export set holds:\n%s", out)
	}
	if !strings.Contains(log.String(), `msg="exporting bans" set=blacklist1`) {
		t.Errorf("the log does not say it exports:\n%s", log.String())
	}
}

// A set without timeout support (the incident's hash:ip blacklist1):
// ctguard exports into it and removes each ban itself when it ends; after a
// restart it removes what it had left there for a ban that ended while it
// was stopped, and never the host's own elements.
func TestRootExportSetWithoutTimeouts(t *testing.T) {
	testutil.RequireRoot(t, "ipset")
	ns, _ := daemonLab(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "ctguard.sock")
	ns.MustRun(t, "ipset", "create", "blacklist1", "hash:ip")
	ns.MustRun(t, "ipset", "add", "blacklist1", "192.0.2.99") // the host's own
	cfg := writeConfig(t, dir, "[enforce]\nexport_set = \"blacklist1\"\n")
	log, daemon := startDaemon(t, ns, "--config", cfg)
	set := func() string { out, _ := ns.Run("ipset", "list", "blacklist1"); return out }
	waitFor(t, "the bot's ban exported", 10*time.Second, func() bool { return strings.Contains(set(), "203.0.113.110") })
	if !strings.Contains(log.String(), "ends=\"removed by ctguard") {
		t.Errorf("the log does not say ctguard ends the exported bans:\n%s", log.String())
	}
	// A manual ban and its lift: in, then out.
	for _, args := range [][]string{{"ban", "198.51.100.77", "--ttl", "10m"}, {"unban", "198.51.100.77"}} {
		if out, err := self(ns, append(args, "--socket", sock)...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		if in := strings.Contains(set(), "198.51.100.77"); in != (args[0] == "ban") {
			t.Fatalf("after %v the set holds:\n%s", args, set())
		}
	}
	stopProcess(daemon)
	// While stopped: 198.51.100.77 is back in the set as if a crash had
	// left it there after its ban ended; 198.51.100.78 is the host's own.
	ns.MustRun(t, "ipset", "add", "blacklist1", "198.51.100.77")
	ns.MustRun(t, "ipset", "add", "blacklist1", "198.51.100.78")
	log2, _ := startDaemon(t, ns, "--config", cfg)
	waitFor(t, "the leftover removed at start", 10*time.Second, func() bool {
		return strings.Contains(log2.String(), "removed bans that ended while ctguard was stopped")
	})
	out := set()
	for a, want := range map[string]bool{"198.51.100.77": false, "198.51.100.78": true, "192.0.2.99": true, "203.0.113.110": true} {
		if strings.Contains(out, a) != want {
			t.Errorf("after the restart %s in the set: %v, want %v\n%s", a, !want, want, out)
		}
	}
}

// lapi is a real CrowdSec Local API (Debian's crowdsec package) run in a
// test's namespace from a copy of the installed config with its own
// database and credentials; cscli talks to it with that copy.
type lapi struct {
	ns   *testutil.NS
	cfg  string
	stop func() // stops the running LAPI
}

// start runs the LAPI until stop or the test's end.
func (l *lapi) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", l.ns.Name, "crowdsec", "-c", l.cfg, "-no-cs", "-no-capi")
	var log syncBuf
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	l.stop = func() {
		once.Do(func() {
			stopProcess(cmd)
			if t.Failed() {
				t.Logf("LAPI log:\n%s", lastLines(log.String(), 40))
			}
		})
	}
	t.Cleanup(l.stop)
	waitFor(t, "the LAPI to listen", 15*time.Second, func() bool { return strings.Contains(log.String(), "Local API listening") })
}

func startLAPI(t *testing.T, ns *testutil.NS, dir string) *lapi {
	t.Helper()
	testutil.RequireRoot(t, "crowdsec", "cscli")
	b, err := os.ReadFile("/etc/crowdsec/config.yaml")
	if err != nil {
		if testutil.InCI() {
			t.Fatalf("crowdsec is installed without its config: %v", err)
		}
		t.Skipf("no /etc/crowdsec/config.yaml: %v", err)
	}
	repl := []struct{ re, to string }{
		{`(?m)^(\s*db_path:).*$`, "$1 " + filepath.Join(dir, "crowdsec.db")},
		{`(?m)^(\s*data_dir:).*$`, "$1 " + dir + "/"},
		{`(?m)^(\s*credentials_path:) /etc/crowdsec/local_api_credentials.yaml$`, "$1 " + filepath.Join(dir, "admin.yaml")},
		{`(?m)^(\s*log_media:).*$`, "$1 stdout"},
		{`(?m)^(\s*daemonize:).*$`, "$1 false"},
		{`(?m)^(\s*listen_uri:).*$`, "$1 127.0.0.1:8080"},
	}
	text := string(b)
	for _, r := range repl {
		text = regexp.MustCompile(r.re).ReplaceAllString(text, r.to)
	}
	l := &lapi{ns: ns, cfg: filepath.Join(dir, "config.yaml")}
	os.WriteFile(l.cfg, []byte(text), 0o600)
	l.cscli(t, "machines", "add", "admin", "--auto", "-f", filepath.Join(dir, "admin.yaml"))
	l.start(t)
	return l
}

func (l *lapi) cscli(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", l.ns.Name, "cscli", "-c", l.cfg}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("cscli %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// With Debian's real crowdsec 1.4.6 LAPI: ctguard's ban arrives there as a
// decision; a range added with cscli (v4 and v6) is enforced as a range and
// lifted when deleted; a decision on the host's own address is refused.
func TestRootCrowdSecRealLAPI(t *testing.T) {
	ns, c := daemonLab(t)
	dir := t.TempDir()
	l := startLAPI(t, ns, dir)
	l.cscli(t, "machines", "add", "ctguard", "--password", "ctguard-test-password", "-f", filepath.Join(dir, "machine.yaml"))
	l.cscli(t, "bouncers", "add", "ctguard-bouncer", "--key", "ctguard-test-key")
	os.Chmod(filepath.Join(dir, "machine.yaml"), 0o600)
	os.WriteFile(filepath.Join(dir, "key"), []byte("ctguard-test-key\n"), 0o600)
	cfg := writeConfig(t, dir, fmt.Sprintf("[crowdsec]\nurl = \"http://127.0.0.1:8080/\"\npush = true\npassword_file = %q\npull = true\napi_key_file = %q\npull_interval = \"1s\"\n",
		filepath.Join(dir, "machine.yaml"), filepath.Join(dir, "key")))
	log, _ := startDaemon(t, ns, "--config", cfg)

	waitFor(t, "ctguard's ban as a decision at the LAPI", 15*time.Second, func() bool {
		out := l.cscli(t, "decisions", "list", "-o", "json")
		return strings.Contains(out, "203.0.113.110") && strings.Contains(out, "ctguard/conntrack-holder")
	})
	l.cscli(t, "decisions", "add", "--range", "198.51.100.0/24", "--duration", "1h", "--reason", "test range")
	l.cscli(t, "decisions", "add", "--range", "2001:db8:77::/48", "--duration", "1h", "--reason", "test range v6")
	added := time.Now()
	waitFor(t, "the LAPI's v4 and v6 ranges enforced", 10*time.Second, func() bool {
		v4, _ := ns.Run("nft", "list", "set", "inet", "ctguard", "net4")
		v6, _ := ns.Run("nft", "list", "set", "inet", "ctguard", "net6")
		return strings.Contains(v4, "198.51.100.0/24") && strings.Contains(v6, "2001:db8:77::/48")
	})
	t.Logf("cscli decisions add to enforcement: %v (pull_interval 1s)", time.Since(added).Round(10*time.Millisecond))
	if d := time.Since(added); d > 3*time.Second {
		t.Errorf("enforced %v after cscli decisions add, want within the pull interval plus a second or so", d)
	}
	if n := count(t, c, "198.51.100.0/24"); n != 0 {
		t.Errorf("the pulled range still holds %d entries", n)
	}
	l.cscli(t, "decisions", "add", "--ip", "192.0.2.10", "--duration", "1h", "--reason", "own address")
	waitFor(t, "the decision on the host's own address refused", 10*time.Second, func() bool {
		return strings.Contains(log.String(), `msg="crowdsec decision refused: the allowlist covers it" prefix=192.0.2.10/32`)
	})
	l.cscli(t, "decisions", "delete", "--range", "198.51.100.0/24")
	waitFor(t, "the deleted range lifted", 10*time.Second, func() bool {
		v4, _ := ns.Run("nft", "list", "set", "inet", "ctguard", "net4")
		return !strings.Contains(v4, "198.51.100.0/24")
	})
	if set := ns.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4"); !strings.Contains(set, "203.0.113.110") {
		t.Errorf("ctguard's own ban is gone:\n%s", set)
	}

	// The LAPI goes away: local defence goes on, the alert waits in the
	// queue and reaches the LAPI once it is back.
	l.stop()
	dst := netip.MustParseAddr("192.0.2.10")
	src := netip.MustParseAddr("203.0.113.120")
	var es []conntrack.Entry
	for i := range 150 {
		p := uint16(30000 + i)
		es = append(es, conntrack.Entry{Proto: conntrack.ProtoTCP, Orig: conntrack.Tuple{Src: src, Dst: dst, SrcPort: p, DstPort: 443},
			Reply:  conntrack.Tuple{Src: dst, Dst: src, SrcPort: 443, DstPort: p},
			Status: conntrack.StatusConfirmed | conntrack.StatusSeenReply | conntrack.StatusAssured, Timeout: 431000,
			TCPState: conntrack.TCPEstablished, HasTCPState: true})
	}
	if n, err := c.Create(context.Background(), es); err != nil || n != len(es) {
		t.Fatalf("create: %d %v", n, err)
	}
	waitFor(t, "a local ban while the LAPI is down", 15*time.Second, func() bool {
		set, _ := ns.Run("nft", "list", "set", "inet", "ctguard", "ban4")
		return strings.Contains(set, "203.0.113.120")
	})
	l.start(t)
	waitFor(t, "the queued alert at the LAPI once it is back", 60*time.Second, func() bool {
		return strings.Contains(l.cscli(t, "decisions", "list", "-o", "json"), "203.0.113.120")
	})
	if strings.Contains(log.String(), "ctguard-test-password") || strings.Contains(log.String(), "ctguard-test-key") {
		t.Error("a credential is in ctguard's log")
	}
}
