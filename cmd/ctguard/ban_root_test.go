package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/daemon"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/store"
	"github.com/ctguard/ctguard/internal/testutil"
)

func TestRootEnforceStoreLocked(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	st, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	start := time.Now()
	_, errs, code := runCLI(t, "list", "--state-dir", dir, "--socket", "/nonexistent/ctguard.sock")
	if code != 1 || !strings.Contains(errs, "locked by a running ctguard (pid") || !strings.Contains(errs, "no daemon answers on /nonexistent/ctguard.sock") {
		t.Fatalf("exit %d, %q", code, errs)
	}
	if time.Since(start) > 3*time.Second {
		t.Fatal("waited too long for the lock")
	}
}

// TestRootEnforceCommands drives the commands end to end inside a fresh
// namespace (the CLI acts on its current namespace's firewall and
// conntrack table, so it runs on a thread switched into it).
func TestRootEnforceCommands(t *testing.T) {
	testutil.RequireRoot(t, "nft", "ip")
	vic, att := testutil.NewNS(t), testutil.NewNS(t)
	testutil.Veth(t, att, "a0", "203.0.113.2/24 203.0.113.3/24", vic, "v0", "203.0.113.1/24")
	vic.Script(t, `nft add table inet t
nft add chain inet t c '{ type filter hook input priority 0; }'
nft add rule inet t c ct state established,related accept`)
	var ln net.Listener
	vic.Do(t, func() {
		var err error
		if ln, err = net.Listen("tcp", "203.0.113.1:8443"); err != nil {
			t.Fatal(err)
		}
	})
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	dial := func(src string) bool {
		ok := false
		att.Do(t, func() {
			d := net.Dialer{Timeout: 500 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
			if c, err := d.Dial("tcp", "203.0.113.1:8443"); err == nil {
				ok = true
				t.Cleanup(func() { c.Close() })
			}
		})
		return ok
	}
	dir := t.TempDir()
	cli := func(args ...string) (string, string, int) {
		var out, errs string
		var code int
		vic.Do(t, func() {
			out, errs, code = runCLI(t, append(args, "--state-dir", dir, "--socket", "/nonexistent/ctguard.sock",
				"--procfs", "/proc/thread-self", "--resolv-conf", "/nonexistent")...)
		})
		return out, errs, code
	}

	if !dial("203.0.113.2") || !dial("203.0.113.2") {
		t.Fatal("setup: cannot connect")
	}
	out, errs, code := cli("ban", "203.0.113.2", "--ttl", "10m", "--reason", "test")
	if code != 0 || !strings.Contains(out, "banned 203.0.113.2/32 for 10m") || !strings.Contains(out, "purged 2 conntrack entries, 0 remain") {
		t.Fatalf("ban: exit %d\n%s\n%s", code, out, errs)
	}
	if dial("203.0.113.2") {
		t.Fatal("banned source connected")
	}
	if !dial("203.0.113.3") {
		t.Fatal("other source blocked")
	}
	if set := vic.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4"); !strings.Contains(set, "203.0.113.2 timeout 10m") {
		t.Fatalf("kernel set:\n%s", set)
	}
	// Own address: refused, exit 1, names the entry.
	if _, errs, code := cli("ban", "203.0.113.0/24"); code != 1 || !strings.Contains(errs, "covers allowlisted 203.0.113.1/32 (local address") {
		t.Fatalf("ban own subnet: exit %d %q", code, errs)
	}
	out, _, code = cli("list", "--json")
	var listed listJSON
	if code != 0 || json.Unmarshal([]byte(out), &listed) != nil {
		t.Fatalf("list --json: exit %d\n%s", code, out)
	}
	if rows := listed.Bans; len(rows) != 1 || rows[0].Prefix.String() != "203.0.113.2/32" ||
		rows[0].Reason != "test" || rows[0].Purged != 2 || rows[0].ExpiresInSeconds < 590 {
		t.Fatalf("list --json: exit %d\n%s", code, out)
	}
	if out, _, code := cli("list"); code != 0 || !regexp.MustCompile(`dropped before conntrack: [1-9]\d* packets`).MatchString(out) {
		t.Fatalf("list does not show the drops:\n%s", out)
	}
	// After `nft flush ruleset`, the next command restores the table.
	vic.MustRun(t, "nft", "flush", "ruleset")
	if out, errs, code := cli("purge", "203.0.113.3"); code != 0 || !strings.Contains(errs, "restored table inet ctguard") || !strings.Contains(out, "purged") {
		t.Fatalf("purge after flush: exit %d\n%s\n%s", code, out, errs)
	}
	if dial("203.0.113.2") {
		t.Fatal("ban not restored after flush ruleset")
	}
	// allow lifts the overlapping ban.
	out, errs, code = cli("allow", "203.0.113.2", "--ttl", "1h", "--note", "partner")
	if code != 0 || !strings.Contains(out, "lifted the ban of 203.0.113.2/32") {
		t.Fatalf("allow: exit %d\n%s\n%s", code, out, errs)
	}
	if !dial("203.0.113.2") {
		t.Fatal("allowed source still blocked")
	}
	if _, errs, code := cli("ban", "203.0.113.2"); code != 1 || !strings.Contains(errs, "runtime allow: partner") {
		t.Fatalf("ban of allowed: exit %d %q", code, errs)
	}
	if out, _, code := cli("allow", "203.0.113.2", "--remove"); code != 0 || !strings.Contains(out, "removed") {
		t.Fatalf("allow --remove: %d %s", code, out)
	}
	if out, errs, code := cli("ban", "203.0.113.2", "--ttl", "5m"); code != 0 || !strings.Contains(out, "(ban #2)") {
		t.Fatalf("second ban: exit %d\n%s\n%s", code, out, errs)
	}
	// A repeat ban without --ttl keeps the longer timeout it has; with
	// --ttl it sets exactly that.
	if out, errs, code := cli("ban", "203.0.113.2", "--ttl", "2h"); code != 0 || !strings.Contains(out, "for 2h") {
		t.Fatalf("ban for 2h: exit %d\n%s\n%s", code, out, errs)
	}
	if out, errs, code := cli("ban", "203.0.113.2"); code != 0 || !strings.Contains(out, "keeps its longer timeout") || !strings.Contains(out, "(ban #4)") {
		t.Fatalf("repeat ban without --ttl: exit %d\n%s\n%s", code, out, errs)
	}
	if set := vic.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4"); !regexp.MustCompile(`203\.0\.113\.2 timeout (2h|1h59m5\d)`).MatchString(set) {
		t.Fatalf("the repeat ban shortened the kernel's timeout:\n%s", set)
	}
	if out, errs, code := cli("unban", "203.0.113.2"); code != 0 || !strings.Contains(out, "unbanned 203.0.113.2/32 (banned 4 times") {
		t.Fatalf("unban: exit %d\n%s\n%s", code, out, errs)
	}
	if _, errs, code := cli("unban", "203.0.113.2"); code != 1 || !strings.Contains(errs, "not banned") {
		t.Fatalf("second unban: exit %d %q", code, errs)
	}
	if !dial("203.0.113.2") {
		t.Fatal("unbanned source still blocked")
	}
	if out, _, code := cli("list", "--all"); code != 0 || !regexp.MustCompile(`203\.0\.113\.2/32\s+lifted: unban\s+-\s`).MatchString(out) {
		t.Fatalf("list --all (a lifted ban counts down nothing):\n%s", out)
	}
	// Bulk: one batch from a file, errors per line, unban --all.
	list := filepath.Join(dir, "targets.txt")
	os.WriteFile(list, []byte("# bots\n198.51.100.1\n\n198.51.100.2  # second\n203.0.113.1\n"), 0o644)
	out, errs, code = cli("ban", "--from", list, "--ttl", "5m")
	if code != 1 || !strings.Contains(out, "banned 2 of 3 (0 already covered, 1 refused)") || !strings.Contains(errs, "203.0.113.1/32") {
		t.Fatalf("ban --from: exit %d\n%s\n%s", code, out, errs)
	}
	os.WriteFile(list, []byte("198.51.100.3\n300.1.1.1\n198.51.101.0/23\n"), 0o644)
	if _, errs, code := cli("ban", "--from", list); code != 2 || !strings.Contains(errs, list+":2:") || !strings.Contains(errs, list+":3:") || !strings.Contains(errs, "nothing changed") {
		t.Fatalf("ban --from with bad lines: exit %d\n%s", code, errs)
	}
	if set := vic.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4"); strings.Contains(set, "198.51.100.3") {
		t.Fatalf("a list with bad lines banned something:\n%s", set)
	}
	if out, errs, code := cli("unban", "--all"); code != 0 || !strings.Contains(out, "unbanned 2 of 2") {
		t.Fatalf("unban --all: exit %d\n%s\n%s", code, out, errs)
	}
	// --json on the changing commands: schema, time, result, seconds.
	out, errs, code = cli("ban", "198.51.100.9", "--ttl", "90s", "--json")
	var a actionJSON
	if code != 0 || json.Unmarshal([]byte(out), &a) != nil || a.Schema != 1 || a.Time.IsZero() || a.Command != "ban" ||
		a.Result != "banned" || a.TTLSeconds != 90 || a.Target != "198.51.100.9/32" || a.Expires == nil {
		t.Fatalf("ban --json: exit %d\n%s\n%s", code, out, errs)
	}
	out, _, code = cli("ban", "203.0.113.1", "--json")
	if code != 1 || json.Unmarshal([]byte(out), &a) != nil || a.Result != "refused" || !strings.Contains(a.Error, "allowlisted") {
		t.Fatalf("refused ban --json: exit %d\n%s", code, out)
	}
	var as []actionJSON
	out, _, code = cli("unban", "--all", "--json")
	if code != 0 || json.Unmarshal([]byte(out), &as) != nil || len(as) != 1 || as[0].Result != "unbanned" || as[0].Target != "198.51.100.9/32" {
		t.Fatalf("unban --all --json: exit %d\n%s", code, out)
	}
	out, _, code = cli("purge", "198.51.100.9", "--json")
	if code != 0 || json.Unmarshal([]byte(out), &a) != nil || a.Command != "purge" || a.Result != "purged" {
		t.Fatalf("purge --json: exit %d\n%s", code, out)
	}
	cli("ban", "198.51.100.0/24", "--ttl", "1h")
	out, _, code = cli("allow", "198.51.100.0/25", "--json")
	if code != 0 || json.Unmarshal([]byte(out), &a) != nil || a.Result != "allowlisted" ||
		strings.Join(a.Lifted, " ") != "198.51.100.0/24" || strings.Join(a.KeptBanned, " ") != "198.51.100.128/25" {
		t.Fatalf("allow --json inside a banned /24: exit %d\n%s", code, out)
	}
	if set := vic.MustRun(t, "nft", "list", "set", "inet", "ctguard", "net4"); !strings.Contains(set, "198.51.100.128/25") {
		t.Fatalf("the rest of the /24 is not banned:\n%s", set)
	}
	if set := vic.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4"); strings.Contains(set, "198.51.100.") {
		t.Fatalf("unban --all left bans in the kernel:\n%s", set)
	}
	out, _, code = cli("list", "--allowlist")
	if code != 0 || !strings.Contains(out, "203.0.113.1/32") || !strings.Contains(out, "local address") || strings.Contains(out, "::ffff:") ||
		strings.Count(out, "\n::1/128") > 1 || strings.Count(out, "\n127.0.0.0/8") != 1 {
		t.Fatalf("list --allowlist (one row per prefix, no IPv4-mapped twins):\n%s", out)
	}
}

// TestRootEnforceGoesThroughDaemonSocket: with a daemon answering on the
// control socket, the commands send their request there and never open the
// store. The server here stands in for the daemon's protocol.
func TestRootEnforceGoesThroughDaemonSocket(t *testing.T) {
	testutil.RequireRoot(t) // the commands refuse non-root before dialling
	sock := filepath.Join(t.TempDir(), "ctguard.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var got []daemon.Request
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var req daemon.Request
			if json.NewDecoder(c).Decode(&req) == nil {
				mu.Lock()
				got = append(got, req)
				mu.Unlock()
				var res any
				switch req.Op {
				case "ban":
					p := netip.MustParsePrefix(req.Target)
					res = struct {
						enforce.BanResult
						Err string `json:"error,omitempty"`
					}{BanResult: enforce.BanResult{Prefix: p, Ban: store.Ban{Prefix: p, Count: 3, Expires: time.Now().Add(req.TTL), Purged: 42}}}
				case "counters":
					res = enforce.Counters{SetCounters: enforce.SetCounters{Ban4: enforce.Counter{Packets: 7, Bytes: 420}}}
				case "list":
					res = []store.Ban{{Prefix: netip.MustParsePrefix("198.51.100.7/32"), Reason: "via daemon", Expires: time.Now().Add(time.Hour)}}
				}
				b, _ := json.Marshal(res)
				json.NewEncoder(c).Encode(daemon.Response{Result: b})
			}
			c.Close()
		}
	}()
	dir := filepath.Join(t.TempDir(), "state")
	out, errs, code := runCLI(t, "ban", "198.51.100.7", "--ttl", "3h", "--reason", "r", "--socket", sock, "--state-dir", dir)
	if code != 0 || !strings.Contains(out, "banned 198.51.100.7/32 for 3h") || !strings.Contains(out, "(ban #3)") || !strings.Contains(out, "purged 42") {
		t.Fatalf("ban via socket: exit %d\n%s\n%s", code, out, errs)
	}
	out, _, code = runCLI(t, "list", "--socket", sock, "--state-dir", dir)
	if code != 0 || !strings.Contains(out, "via daemon") || !strings.Contains(out, "7 packets, 420 bytes") {
		t.Fatalf("list via socket: exit %d\n%s", code, out)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 || got[0].Op != "ban" || got[0].Target != "198.51.100.7/32" || got[0].TTL != 3*time.Hour || got[0].Reason != "r" ||
		got[1].Op != "list" || got[2].Op != "counters" {
		t.Fatalf("requests %+v", got)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatal("the store was opened although a daemon answered")
	}
}

// Without a daemon, the enforcement commands read the same configuration
// as ctguard run: its allow.addresses protect, its state_dir holds the bans.
func TestRootCommandsReadTheConfig(t *testing.T) {
	testutil.RequireRoot(t, "nft", "ip")
	ns := testutil.NewNS(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "ctguard.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[daemon]\nstate_dir = %q\n[allow]\naddresses = [\"198.51.100.0/24\"]\nresolv_conf = \"/nonexistent\"\n", filepath.Join(dir, "state"))), 0o644)
	cli := func(args ...string) (string, string, int) {
		var out, errs string
		var code int
		ns.Do(t, func() {
			out, errs, code = runCLI(t, append(args, "--config", cfg, "--socket", "/nonexistent/ctguard.sock", "--procfs", "/proc/thread-self")...)
		})
		return out, errs, code
	}
	if _, errs, code := cli("ban", "198.51.100.9"); code != 1 || !strings.Contains(errs, "allow.addresses") {
		t.Errorf("ban inside the configured allowlist: exit %d %s", code, errs)
	}
	if out, errs, code := cli("ban", "203.0.113.9", "--ttl", "5m"); code != 0 || !strings.Contains(out, "banned 203.0.113.9/32") {
		t.Fatalf("ban: exit %d %s %s", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); err != nil {
		t.Errorf("the configured state_dir holds no store: %v", err)
	}
	if out, _, code := cli("list"); code != 0 || !strings.Contains(out, "203.0.113.9/32") {
		t.Errorf("list from the configured store: exit %d\n%s", code, out)
	}
	if out, _, code := cli("list", "--allowlist"); code != 0 || !strings.Contains(out, "198.51.100.0/24") {
		t.Errorf("list --allowlist lacks the configured entry: exit %d\n%s", code, out)
	}
	var out, errs string
	var code int
	ns.Do(t, func() {
		out, errs, code = runCLI(t, "status", "--sample", "0", "--config", cfg, "--socket", "/nonexistent/ctguard.sock")
	})
	if code != 0 || !strings.Contains(out, "config     "+cfg) {
		t.Errorf("status does not say which configuration it read: exit %d\n%s%s", code, out, errs)
	}
}
