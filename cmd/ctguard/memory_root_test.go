package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/testutil"
)

// memLimitMiB is what the daemon may use at a full 262,144-entry table of
// distinct IPv6 sources (the unit allows 256 MiB).
const memLimitMiB = 100

// The daemon's memory at a full table where every entry comes from its own
// IPv6 /64 (the worst case for per-source state): peak RSS under
// memLimitMiB over several scans, and a top asking for every row bounded.
func TestRootMemoryDistinctIPv6Sources(t *testing.T) {
	testutil.RequireRoot(t, "nft", "ip")
	const entries = 262_000
	ns := testutil.NewNS(t)
	ns.MustRun(t, "ip", "-6", "addr", "add", "2001:db8::10/128", "dev", "lo")
	ns.MustRun(t, "nft", "add table inet lab; add chain inet lab in { type filter hook input priority 0; }; add rule inet lab in ct state established accept")
	var c *conntrack.Conn
	var err error
	ns.Do(t, func() { c, err = conntrack.Open() })
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dst := netip.MustParseAddr("2001:db8::10")
	batch := make([]conntrack.Entry, 0, 4096)
	created := 0
	for i := range entries {
		// 2001:db8:XXXX:YYYY::1, one /64 per entry.
		src := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(i >> 16), byte(i >> 8), byte(i), 15: 1})
		batch = append(batch, conntrack.Entry{Proto: conntrack.ProtoTCP,
			Orig:   conntrack.Tuple{Src: src, Dst: dst, SrcPort: 40000, DstPort: 443},
			Reply:  conntrack.Tuple{Src: dst, Dst: src, SrcPort: 443, DstPort: 40000},
			Status: conntrack.StatusConfirmed | conntrack.StatusSeenReply | conntrack.StatusAssured,
			// Each source holds one entry: nobody is a candidate, so the
			// daemon keeps scanning the full table.
			Timeout: uint32(432000 - 600), TCPState: conntrack.TCPEstablished, HasTCPState: true})
		if len(batch) == cap(batch) || i == entries-1 {
			n, err := c.Create(context.Background(), batch)
			created += n
			if err != nil {
				t.Fatalf("create: %d so far: %v", created, err)
			}
			batch = batch[:0]
		}
	}
	dir := t.TempDir()
	log, cmd := startPlain(t, ns, "--config", writeConfig(t, dir, "\n[log]\nlevel = \"debug\"\n"))
	// Full scans: at 262,000 of 262,144 the emergency valve sweeps the
	// most idle entries down to 90 %, so count cycles that saw 200,000+.
	fullScan := regexp.MustCompile(`msg=cycle entries=2\d{5} `)
	cycles := func() int { return len(fullScan.FindAllString(log.String(), -1)) }
	waitFor(t, "five full scans", 90*time.Second, func() bool { return cycles() >= 5 })
	hwm := func() float64 { return statusKiB(t, cmd.Process.Pid, "VmHWM") / 1024 }
	t.Logf("%d entries from %d distinct /64s: peak RSS %.1f MiB after %d scans", created, created, hwm(), cycles())
	// Each source holds one entry, so no holder frees much: the valve's
	// sweep of the most idle entries of any source must.
	if m := regexp.MustCompile(`EMERGENCY VALVE.* deleted=(\d+) .*swept_idle=(\d+)`).FindStringSubmatch(log.String()); m == nil || m[2] == "0" {
		t.Errorf("the valve swept nothing on a full table of single-entry sources:\n%s", lastLines(log.String(), 20))
	} else {
		t.Logf("valve: deleted %s entries, %s of them swept from sources holding one each", m[1], m[2])
	}
	if m := hwm(); m > memLimitMiB {
		t.Errorf("peak RSS %.1f MiB, want at most %d MiB", m, memLimitMiB)
	}

	// top asking for a million rows through the daemon: bounded output, bounded RSS.
	out, err := self(ns, "top", "--json", "-n", "1000000", "--socket", dir+"/ctguard.sock").Output()
	if err != nil {
		t.Fatalf("top -n 1000000: %v", err)
	}
	t.Logf("top -n 1000000 --json: %d bytes; daemon peak RSS now %.1f MiB", len(out), hwm())
	if m := hwm(); m > memLimitMiB {
		t.Errorf("peak RSS after top -n 1000000: %.1f MiB, want at most %d MiB", m, memLimitMiB)
	}
}

// statusKiB reads a "Name: N kB" line of /proc/PID/status.
func statusKiB(t *testing.T, pid int, name string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+":"); ok {
			n, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", name, pid)
	return 0
}

var (
	plainOnce sync.Once
	plainBin  string
	plainErr  error
)

// plainBinary builds ctguard without the race detector (make test runs
// with -race, which multiplies memory several times): memory figures must
// come from the binary users run.
func plainBinary(t *testing.T) string {
	t.Helper()
	plainOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ctguard-plain-")
		if err != nil {
			plainErr = err
			return
		}
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(gobin); err != nil {
			gobin = "go"
		}
		plainBin = filepath.Join(dir, "ctguard")
		cmd := exec.Command(gobin, "build", "-o", plainBin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			plainErr = fmt.Errorf("build ctguard: %v: %s", err, out)
		}
	})
	if plainErr != nil {
		t.Fatal(plainErr)
	}
	return plainBin
}

// startPlain runs the plain ctguard binary as `ctguard run args...` inside
// ns, like startDaemon does with the test binary.
func startPlain(t *testing.T, ns *testutil.NS, args ...string) (*syncBuf, *exec.Cmd) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, plainBinary(t), "run"}, args...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CTGUARD_SOCKET=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	return startLogged(t, cmd)
}

// lastLines is the end of a log, for a failure message.
func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(ls[max(0, len(ls)-n):], "\n")
}
