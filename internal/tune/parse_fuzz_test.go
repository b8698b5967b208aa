package tune

import (
	"bytes"
	"strings"
	"testing"
)

// Fuzz targets for every parser of file input. Seeds: the fixture files
// (added below) and testdata/fuzz/<target>/. Run one with e.g.
//   go test ./internal/tune -run '^$' -fuzz FuzzParseSysctlConf -fuzztime 30s

func addFixtureSeeds(f *testing.F, rels ...string) {
	for _, host := range []string{"incident-4.9", "incident-5.15", "host-4g", "host-64g", "kube"} {
		for _, rel := range rels {
			if data, err := readSmall("testdata/" + host + "/" + rel); err == nil {
				f.Add(data)
			}
		}
	}
}

func FuzzParseSysctlConf(f *testing.F) {
	addFixtureSeeds(f, "etc/sysctl.conf", "etc/sysctl.d/95-k8s-conntrack.conf", "etc/sysctl.d/50-old-conntrack.conf")
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, s := range parseSysctlConf(data) {
			if s.Key == "" || strings.ContainsAny(s.Key, " \t\n/") || strings.HasPrefix(s.Key, "-") {
				t.Fatalf("bad key %q", s.Key)
			}
			if s.Line < 1 || strings.Contains(s.Value, "\n") {
				t.Fatalf("bad setting %+v", s)
			}
		}
	})
}

func FuzzParseModprobeConf(f *testing.F) {
	addFixtureSeeds(f, "etc/modprobe.d/nf_conntrack.conf")
	f.Add([]byte("options nf-conntrack \\\n hashsize=\"4096\" expect_hashsize=1 # c\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, o := range parseModprobeConf(data) {
			if o.Param == "" || strings.Contains(o.Module, "-") || o.Line < 1 {
				t.Fatalf("bad option %+v", o)
			}
		}
	})
}

func FuzzParseSlabinfo(f *testing.F) {
	addFixtureSeeds(f, "proc/slabinfo")
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseSlabinfo(data)
		if err != nil {
			return
		}
		if !isConntrackSlab(s.Name) || s.ObjSize < 64 || s.ObjCost(4096) < s.ObjSize {
			t.Fatalf("bad slab %+v", s)
		}
	})
}

func FuzzParseMeminfo(f *testing.F) {
	addFixtureSeeds(f, "proc/meminfo")
	f.Fuzz(func(t *testing.T, data []byte) {
		if n, err := parseMeminfo(data); err == nil && n == 0 {
			t.Fatal("MemTotal 0 accepted")
		}
	})
}

func FuzzParseKernel(f *testing.F) {
	addFixtureSeeds(f, "proc/sys/kernel/osrelease")
	f.Fuzz(func(t *testing.T, data []byte) {
		if k, err := parseKernel(data); err == nil && (k.Major <= 0 || k.Minor < 0) {
			t.Fatalf("bad kernel %+v", k)
		}
	})
}

func FuzzParseProcNet(f *testing.F) {
	addFixtureSeeds(f, "proc/net/tcp", "proc/net/fib_trie")
	f.Add([]byte("fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, p := range parseListen(data) {
			if p == 0 {
				t.Fatal("port 0")
			}
		}
		for _, a := range parseFibTrie(bytes.NewReader(data)) {
			if !a.Is4() {
				t.Fatalf("fib_trie gave %v", a)
			}
		}
		for _, a := range parseIfInet6(data) {
			if !a.IsValid() {
				t.Fatal("invalid address")
			}
		}
	})
}
