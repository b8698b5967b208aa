package scan

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/snapshot"
)

func write(t *testing.T, root, rel, content string) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// incidentHost is a procfs tree of the incident's host: kernel 4.9, max
// 16384, the /proc file with ten of the incident's entries, and the old
// stat file.
func incidentHost(t *testing.T) string {
	root := t.TempDir()
	nf := "sys/net/netfilter/"
	write(t, root, nf+"nf_conntrack_max", "16384\n")
	write(t, root, nf+"nf_conntrack_count", "10\n")
	write(t, root, nf+"nf_conntrack_buckets", "4096\n")
	write(t, root, nf+"nf_conntrack_tcp_timeout_established", "432000\n")
	write(t, root, nf+"nf_conntrack_tcp_timeout_unacknowledged", "300\n")
	write(t, root, nf+"nf_conntrack_tcp_timeout_max_retrans", "300\n")
	write(t, root, nf+"nf_conntrack_udp_timeout", "30\n")
	write(t, root, "sys/kernel/osrelease", "4.9.0-6-amd64\n")
	b, err := os.ReadFile("../conntrack/testdata/incident-nf_conntrack.txt")
	if err != nil {
		t.Fatal(err)
	}
	write(t, root, "net/nf_conntrack", string(b))
	write(t, root, "net/stat/nf_conntrack",
		"entries  searched found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n"+
			"0000000a  00000000 00000010 00000000 00000002 00000000 00000000 00000000 00000005 00000001 0000000c 00000003 00000000  00000000 00000000 00000000 00000004\n"+
			"0000000a  00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000001 00000000 00000001 00000000 00000000  00000000 00000000 00000000 00000000\n")
	return root
}

func TestReadSysctls(t *testing.T) {
	s, err := ReadSysctls(incidentHost(t))
	if err != nil {
		t.Fatal(err)
	}
	if s.Max != 16384 || s.Count != 10 || s.Buckets != 4096 || s.Kernel != "4.9.0-6-amd64" ||
		s.Timeouts["tcp_timeout_established"] != 432000 || s.Timeouts["udp_timeout"] != 30 {
		t.Fatalf("%+v", s)
	}
	cfg := s.SnapshotConfig(snapshot.Config{})
	if cfg.EstablishedTimeout != 432000 || cfg.StallCap != 300 || cfg.IdleThreshold != 60 {
		t.Errorf("config %+v", cfg)
	}
	if _, err := ReadSysctls(t.TempDir()); !errors.Is(err, conntrack.ErrNotLoaded) {
		t.Errorf("empty procfs: %v", err)
	}
}

func TestProcSourceOnFixtureTree(t *testing.T) {
	root := incidentHost(t)
	src, err := Open(context.Background(), Proc, root)
	if err != nil {
		t.Fatal(err)
	}
	st, err := src.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Count != 10 || st.Max != 16384 || st.CPUs != 2 || st.Found != 17 || st.Invalid != 2 ||
		st.InsertFailed != 1 || st.Drop != 13 || st.EarlyDrop != 3 || st.SearchRestart != 4 {
		t.Errorf("stats %+v", st)
	}
	a := snapshot.NewAggregator(snapshot.Config{})
	snap, err := src.Scan(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Total != 10 || snap.Reader != "proc" || len(snap.Sources) != 3 || snap.Sources[0].Entries != 5 {
		t.Errorf("snapshot %+v", snap)
	}
	write(t, root, "net/stat/nf_conntrack", "entries found\n1 zz\n")
	if _, err := src.Stats(context.Background()); err == nil {
		t.Error("bad stat file accepted")
	}
	if _, err := Open(context.Background(), "magic", root); err == nil {
		t.Error("unknown reader accepted")
	}
	os.Remove(filepath.Join(root, "net/nf_conntrack"))
	if _, err := Open(context.Background(), Proc, root); !errors.Is(err, conntrack.ErrNoProcFile) {
		t.Errorf("missing /proc file: %v", err)
	}
}
