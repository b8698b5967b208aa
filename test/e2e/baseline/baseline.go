// Package baseline is the lab's own implementation of the cron-script
// method (a cron bash script that counts entries per source in
// /proc/net/nf_conntrack, bans sources above 30 with ipset and deletes
// their entries with `conntrack -D`): every run, count the conntrack
// entries per first src= address, and for every address over the threshold
// add it to the ipset blacklist1 (hash:ip, no timeout) and delete its
// entries with `conntrack -D --src`. The set is matched by one iptables
// rule in the filter table's INPUT chain, after conntrack, as in the script.
//
// It runs inside the victim namespace. The only change from the script is a
// generous one: IPv6 offenders go to a second set blacklist1-v6 with an
// ip6tables rule (the script's hash:ip set is IPv4 only, so its `ipset add`
// would fail for them while `conntrack -D` still ran).
package baseline

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/ctguard/ctguard/test/e2e/wire"
)

// Set names as in the cron script.
const (
	SetV4 = "blacklist1"
	SetV6 = "blacklist1-v6"
)

// CountSources counts lines per first src= address (the original
// direction's source) in /proc/net/nf_conntrack or `conntrack -L` text.
// Unlike the cron script's awk field 8, this also works for UDP and ICMP lines,
// which have no state column.
func CountSources(r io.Reader) (map[string]int, int, error) {
	counts := map[string]int{}
	lines := 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		i := strings.Index(line, "src=")
		if i < 0 {
			continue
		}
		lines++
		rest := line[i+4:]
		if j := strings.IndexByte(rest, ' '); j >= 0 {
			rest = rest[:j]
		}
		counts[rest]++
	}
	return counts, lines, sc.Err()
}

// Offender is an address over the threshold.
type Offender struct {
	Addr    string
	Entries int
}

// Offenders returns the addresses with more than threshold entries, most
// entries first (ties by address, so runs are reproducible).
func Offenders(counts map[string]int, threshold int) []Offender {
	var out []Offender
	for a, n := range counts {
		if n > threshold {
			out = append(out, Offender{a, n})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Entries != out[j].Entries {
			return out[i].Entries > out[j].Entries
		}
		return out[i].Addr < out[j].Addr
	})
	return out
}

// Runner runs commands; the real one forks, tests use a fake.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Exec is the real Runner.
type Exec struct{}

// Run runs the command and returns its combined output.
func (Exec) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// Config of the baseline.
type Config struct {
	Threshold int           // the cron script's THRESHOLD; default 30
	Interval  time.Duration // pause between runs; default 5 s
	Duration  time.Duration // hard stop
	Table     string        // conntrack table file; default /proc/net/nf_conntrack
}

// Setup creates the sets and the INPUT rules, as the admin did once.
func Setup(ctx context.Context, r Runner) error {
	steps := [][]string{
		{"ipset", "create", SetV4, "hash:ip"},
		{"ipset", "create", SetV6, "hash:ip", "family", "inet6"},
		{"iptables", "-I", "INPUT", "-m", "set", "--match-set", SetV4, "src", "-j", "DROP"},
		{"ip6tables", "-I", "INPUT", "-m", "set", "--match-set", SetV6, "src", "-j", "DROP"},
	}
	for _, s := range steps {
		if _, err := r.Run(ctx, s[0], s[1:]...); err != nil {
			return fmt.Errorf("baseline setup: %w", err)
		}
	}
	return nil
}

// Once is one run of the method; it returns the table size it read and the
// offenders it acted on.
func Once(ctx context.Context, r Runner, cfg Config, w *wire.Writer, log *slog.Logger) (int, []Offender, error) {
	counts, lines, err := readTable(ctx, r, cfg.Table)
	if err != nil {
		return 0, nil, err
	}
	offs := Offenders(counts, cfg.Threshold)
	for _, o := range offs {
		a, err := netip.ParseAddr(o.Addr)
		if err != nil {
			log.Warn("skip unparsable source", "src", o.Addr)
			continue
		}
		set := SetV4
		if a.Is6() {
			set = SetV6
		}
		if _, err := r.Run(ctx, "ipset", "add", set, a.String()); err != nil {
			// Already there (an entry that survived a previous purge): the
			// cron script ignores this too, and goes on to delete.
			log.Debug("ipset add", "err", err)
		}
		out, err := r.Run(ctx, "conntrack", "-D", "--src", a.String())
		if err != nil && ctx.Err() != nil {
			return lines, offs, ctx.Err()
		}
		_ = w.Write(wire.Record{Kind: "ban", Ban: &wire.Ban{Addr: a.String(), Entries: o.Entries, Deleted: deletedCount(out)}})
	}
	return lines, offs, nil
}

// Run repeats Once with Interval between the end of one run and the start
// of the next (a `while :; do script; sleep N; done` loop) until ctx ends.
func Run(ctx context.Context, r Runner, cfg Config, w *wire.Writer, log *slog.Logger) error {
	if cfg.Threshold == 0 {
		cfg.Threshold = 30
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Duration <= 0 {
		return fmt.Errorf("baseline: need a duration")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	if err := Setup(ctx, r); err != nil {
		return err
	}
	_ = w.Write(wire.Record{Kind: "ready"})
	for {
		start := time.Now()
		lines, offs, err := Once(ctx, r, cfg, w, log)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		_ = w.Write(wire.Record{Kind: "scan", Scan: &wire.Scan{Entries: lines, Offenders: len(offs), DurMS: time.Since(start).Milliseconds()}})
		t := time.NewTimer(cfg.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

func readTable(ctx context.Context, r Runner, path string) (map[string]int, int, error) {
	if path == "" {
		path = "/proc/net/nf_conntrack"
	}
	if f, err := os.Open(path); err == nil {
		defer f.Close()
		return CountSources(f)
	}
	// Kernels without CONFIG_NF_CONNTRACK_PROCFS: same key=value text.
	out, err := r.Run(ctx, "conntrack", "-L")
	if err != nil {
		return nil, 0, err
	}
	return CountSources(bytes.NewReader(out))
}

// deletedCount reads "conntrack v1.4.7 (conntrack-tools): N flow entries
// have been deleted." from conntrack -D output; -1 if absent.
func deletedCount(out []byte) int {
	for _, line := range strings.Split(string(out), "\n") {
		if _, rest, ok := strings.Cut(line, "): "); ok {
			var n int
			if _, err := fmt.Sscanf(rest, "%d flow entries", &n); err == nil {
				return n
			}
		}
	}
	return -1
}
