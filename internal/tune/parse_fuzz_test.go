package tune

import (
	"strings"
	"testing"

	"github.com/ctguard/ctguard/internal/host"
)

// Fuzz targets for every parser of file input. Seeds: the fixture files
// (added below) and testdata/fuzz/<target>/. Run one with e.g.
//   go test ./internal/tune -run '^$' -fuzz FuzzParseSysctlConf -fuzztime 30s
// The parsers of kernel text (osrelease, meminfo, slabinfo, /proc/net) and
// their fuzz targets are in package host.

func addFixtureSeeds(f *testing.F, rels ...string) {
	for _, dir := range []string{"incident-4.9", "incident-5.15", "host-4g", "host-64g", "kube"} {
		for _, rel := range rels {
			if data, err := host.ReadSmall("testdata/" + dir + "/" + rel); err == nil {
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
