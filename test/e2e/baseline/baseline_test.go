package baseline

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ctguard/ctguard/test/e2e/wire"
)

func TestCountSources(t *testing.T) {
	in := `ipv4     2 tcp      6 430999 ESTABLISHED src=192.0.2.66 dst=192.0.2.10 sport=20001 dport=443 src=192.0.2.10 dst=192.0.2.66 sport=443 dport=20001 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 29 src=192.0.2.66 dst=192.0.2.10 sport=5353 dport=443 [UNREPLIED] src=192.0.2.10 dst=192.0.2.66 sport=443 dport=5353 mark=0 zone=0 use=2
ipv4     2 icmp     1 28 src=192.0.2.97 dst=192.0.2.10 type=8 code=0 id=77 [UNREPLIED] src=192.0.2.10 dst=192.0.2.97 type=0 code=0 id=77 mark=0 zone=0 use=2
ipv6     10 udp      17 29 src=2001:0db8:0000:0000:0000:0000:0000:0067 dst=2001:0db8:0000:0000:0000:0000:0000:0010 sport=20001 dport=443 [UNREPLIED] src=2001:0db8:0000:0000:0000:0000:0000:0010 dst=2001:0db8:0000:0000:0000:0000:0000:0067 sport=443 dport=20001 mark=0 zone=0 use=2
garbage line
`
	counts, lines, err := CountSources(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	// The reply direction's src= (the server) must not be counted, and UDP
	// and ICMP lines count too (the cron script's awk field 8 misses them).
	if lines != 4 || counts["192.0.2.66"] != 2 || counts["192.0.2.97"] != 1 || counts["192.0.2.10"] != 0 ||
		counts["2001:0db8:0000:0000:0000:0000:0000:0067"] != 1 {
		t.Fatalf("lines %d counts %v", lines, counts)
	}
}

func TestOffenders(t *testing.T) {
	got := Offenders(map[string]int{"a": 30, "b": 31, "c": 300, "d": 31}, 30)
	want := []Offender{{"c", 300}, {"b", 31}, {"d", 31}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v (threshold is 'more than 30')", got, want)
	}
}

type fakeRunner struct{ calls []string }

func (f *fakeRunner) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	c := name + " " + strings.Join(args, " ")
	f.calls = append(f.calls, c)
	if name == "conntrack" {
		return []byte("conntrack v1.4.7 (conntrack-tools): 31 flow entries have been deleted.\n"), nil
	}
	return nil, nil
}

func TestOnce(t *testing.T) {
	var sb strings.Builder
	for i := 0; i < 31; i++ {
		fmt.Fprintf(&sb, "ipv4 2 tcp 6 431999 ESTABLISHED src=198.18.0.1 dst=198.51.100.2 sport=%d dport=443 src=198.51.100.2 dst=198.18.0.1 sport=443 dport=%d [ASSURED] mark=0 use=1\n", 1000+i, 1000+i)
		fmt.Fprintf(&sb, "ipv6 10 tcp 6 431999 ESTABLISHED src=2001:0db8:0bad:0001:0000:0000:0000:0001 dst=2001:0db8:00ff:0001:0000:0000:0000:0002 sport=%d dport=443 src=2001:0db8:00ff:0001:0000:0000:0000:0002 dst=2001:0db8:0bad:0001:0000:0000:0000:0001 sport=443 dport=%d [ASSURED] mark=0 use=1\n", 1000+i, 1000+i)
	}
	for i := 0; i < 30; i++ {
		fmt.Fprintf(&sb, "ipv4 2 tcp 6 431999 ESTABLISHED src=203.0.113.10 dst=198.51.100.2 sport=%d dport=443 src=198.51.100.2 dst=203.0.113.10 sport=443 dport=%d [ASSURED] mark=0 use=1\n", 1000+i, 1000+i)
	}
	table := filepath.Join(t.TempDir(), "nf_conntrack")
	if err := os.WriteFile(table, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	f := &fakeRunner{}
	var out bytes.Buffer
	lines, offs, err := Once(context.Background(), f, Config{Threshold: 30, Table: table}, wire.NewWriter(&out), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if lines != 92 || len(offs) != 2 {
		t.Fatalf("lines %d offenders %v", lines, offs)
	}
	want := []string{
		"ipset add blacklist1 198.18.0.1", "conntrack -D --src 198.18.0.1",
		"ipset add blacklist1-v6 2001:db8:bad:1::1", "conntrack -D --src 2001:db8:bad:1::1",
	}
	if strings.Join(f.calls, "\n") != strings.Join(want, "\n") {
		t.Fatalf("calls:\n%s\nwant:\n%s", strings.Join(f.calls, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(out.String(), `"deleted":31`) {
		t.Fatalf("ban records do not carry the deleted count: %s", out.String())
	}
}

func TestDeletedCount(t *testing.T) {
	for in, want := range map[string]int{
		"conntrack v1.4.7 (conntrack-tools): 263 flow entries have been deleted.\n": 263,
		"conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.":     0,
		"something else": -1,
	} {
		if got := deletedCount([]byte(in)); got != want {
			t.Errorf("deletedCount(%q) = %d, want %d", in, got, want)
		}
	}
}
