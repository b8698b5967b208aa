package tune

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// treeState maps every regular file under the fixture's three roots to its
// content and mode, to compare before apply with after rollback.
func treeState(t *testing.T, r Roots) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, root := range []string{r.Procfs, r.Sysfs, r.Etc} {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			st, _ := d.Info()
			out[p] = st.Mode().String() + " " + string(data)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func diffStates(t *testing.T, before, after map[string]string) {
	t.Helper()
	for p, v := range before {
		if w, ok := after[p]; !ok {
			t.Errorf("%s: missing after rollback", p)
		} else if w != v {
			t.Errorf("%s: %q after rollback, was %q", p, w, v)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s: left behind by apply+rollback", p)
		}
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

func TestApplyRollbackRoundTrip(t *testing.T) {
	for _, name := range []string{"incident-4.9", "incident-5.15", "host-4g", "host-64g", "kube"} {
		t.Run(name, func(t *testing.T) {
			r := fixture(t, name)
			before := treeState(t, r)
			h := readHost(t, r)
			p := Recommend(h, nil, Budget{})
			c, err := Prepare(r, p)
			if err != nil {
				t.Fatal(err)
			}
			var diff bytes.Buffer
			WriteDiff(&diff, c)
			// kube-proxy owns max and the established timeout there: tune
			// leaves them out and says so (TestKubeProxyOwnsItems).
			kube := name == "kube"
			mx, _ := p.Item(Max)
			wantMax, wantEst := itoa(mx.Recommended), "8400"
			if kube {
				wantMax, wantEst = itoa(h.Sysctl[Max]), itoa(h.Sysctl[Established])
				for _, want := range []string{"not applied: net.netfilter.nf_conntrack_max = " + itoa(mx.Recommended),
					"not applied: net.netfilter.nf_conntrack_tcp_timeout_established = 8400"} {
					if !strings.Contains(diff.String(), want) {
						t.Errorf("diff lacks %q:\n%s", want, diff.String())
					}
				}
			} else if !strings.Contains(diff.String(), "+net.netfilter.nf_conntrack_tcp_timeout_established = 8400") {
				t.Errorf("diff lacks the established line:\n%s", diff.String())
			}
			done, err := Apply(r, c, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range done.Live {
				if l.Err != "" {
					t.Errorf("live %s: %s", l.Key, l.Err)
				}
			}
			if got := mustRead(t, r.SysctlPath(Max)); got != wantMax {
				t.Errorf("live max %s, want %s", got, wantMax)
			}
			if got := mustRead(t, r.SysctlPath(Established)); got != wantEst {
				t.Errorf("live established %s, want %s", got, wantEst)
			}
			sys := mustRead(t, filepath.Join(r.Etc, "sysctl.d", SysctlFile))
			if strings.Contains(sys, "net.netfilter.nf_conntrack_max = "+itoa(mx.Recommended)) == kube ||
				strings.Contains(sys, Established) == kube {
				t.Errorf("sysctl file:\n%s", sys)
			}
			if got := mustRead(t, filepath.Join(r.Etc, "modules-load.d", ModulesLoadFile)); !strings.HasSuffix(got, "\nnf_conntrack") {
				t.Errorf("modules-load file: %q", got)
			}
			modPath := filepath.Join(r.Etc, "modprobe.d", ModprobeFile)
			if name == "incident-4.9" {
				// 4.9: read-only buckets sysctl: module option + live /sys parameter.
				if got := mustRead(t, modPath); !strings.Contains(got, "options nf_conntrack hashsize=21504") {
					t.Errorf("modprobe file: %q", got)
				}
				if got := mustRead(t, r.HashsizePath()); got != "21504" {
					t.Errorf("live hashsize %s", got)
				}
				if strings.Contains(sys, Buckets) {
					t.Error("buckets in sysctl.d on a kernel where it is read-only")
				}
			} else {
				if _, err := os.Stat(modPath); err == nil {
					t.Error("modprobe option written although buckets are a writable sysctl (it would make the boot max 8x)")
				}
				if !strings.Contains(sys, "nf_conntrack_buckets = ") || (!kube && strings.Index(sys, Buckets) > strings.Index(sys, Max)) {
					t.Errorf("buckets must be in the sysctl file before max:\n%s", sys)
				}
			}

			// Idempotent: re-reading the host gives nothing more to do.
			p2 := Recommend(readHost(t, r), nil, Budget{})
			c2, err := Prepare(r, p2)
			if err != nil {
				t.Fatal(err)
			}
			if !c2.Empty() {
				var b bytes.Buffer
				WriteDiff(&b, c2)
				t.Errorf("second apply not empty:\n%s", b.String())
			}
			// A second apply with another budget, then one rollback: back to
			// the state before the first.
			p3 := Recommend(readHost(t, r), nil, Budget{MemPercent: 1})
			c3, _ := Prepare(r, p3)
			if c3.Empty() {
				t.Fatal("a 1 % budget changes max")
			}
			if _, err := Apply(r, c3, nil); err != nil {
				t.Fatal(err)
			}
			rb, err := PrepareRollback(r)
			if err != nil {
				t.Fatal(err)
			}
			if len(rb.Files) == 0 || len(rb.Live) == 0 {
				t.Fatalf("rollback plan empty: %+v", rb)
			}
			if _, err := Rollback(r, nil); err != nil {
				t.Fatal(err)
			}
			diffStates(t, before, treeState(t, r))
			if _, err := Rollback(r, nil); !errors.Is(err, ErrNoBackup) {
				t.Errorf("second rollback: %v, want ErrNoBackup", err)
			}
		})
	}
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// A file that already sits at ctguard's path (hand-written, say) is backed
// up byte for byte, with its mode, and restored.
func TestApplyBacksUpForeignFile(t *testing.T) {
	r := fixture(t, "incident-5.15")
	own := filepath.Join(r.Etc, "sysctl.d", SysctlFile)
	if err := os.MkdirAll(filepath.Dir(own), 0o755); err != nil {
		t.Fatal(err)
	}
	orig := "# hand-written\nnet.netfilter.nf_conntrack_max = 8192\n"
	if err := os.WriteFile(own, []byte(orig), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chmod(own, 0o600)
	before := treeState(t, r)
	c, err := Prepare(r, Recommend(readHost(t, r), nil, Budget{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(r, c, nil); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, own); strings.Contains(got, "hand-written") {
		t.Fatalf("not replaced: %s", got)
	}
	if _, err := Rollback(r, nil); err != nil {
		t.Fatal(err)
	}
	diffStates(t, before, treeState(t, r))
}

// A live value that cannot be written is reported, the rest applied; the
// rollback of the others still works.
func TestApplyLiveFailure(t *testing.T) {
	r := fixture(t, "incident-5.15")
	before := treeState(t, r)
	c, err := Prepare(r, Recommend(readHost(t, r), nil, Budget{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(r.SysctlPath(TimeWait)); err != nil {
		t.Fatal(err)
	}
	delete(before, r.SysctlPath(TimeWait))
	done, err := Apply(r, c, nil)
	if err != nil {
		t.Fatal(err)
	}
	failed := 0
	for _, l := range done.Live {
		if l.Err != "" {
			failed++
			if l.Key != keyPrefix+TimeWait {
				t.Errorf("unexpected failure %s: %s", l.Key, l.Err)
			}
		}
	}
	if failed != 1 {
		t.Errorf("%d failures, want 1 (time_wait)", failed)
	}
	if _, err := os.Stat(r.SysctlPath(TimeWait)); err == nil {
		t.Error("apply created a live file that did not exist")
	}
	if _, err := Rollback(r, nil); err != nil {
		t.Fatal(err)
	}
	diffStates(t, before, treeState(t, r))
}

func TestManifestRejectsEscapes(t *testing.T) {
	r := fixture(t, "incident-5.15")
	if err := os.MkdirAll(r.backupPath(), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{
		`{"version":1,"files":[{"rel":"../../outside","existed":false}]}`,
		`{"version":1,"live":[{"key":"x","root":"procfs","rel":"/etc/passwd","value":"1"}]}`,
		`{"version":1,"live":[{"key":"x","root":"elsewhere","rel":"sys/x","value":"1"}]}`,
		`{"version":1,"files":[{"rel":"sysctl.d/x.conf","existed":true,"backup":"../x"}]}`,
		// Inside the roots, but nothing tune manages:
		`{"version":1,"live":[{"key":"kernel.core_pattern","root":"procfs","rel":"sys/kernel/core_pattern","value":"|/tmp/x"}]}`,
		`{"version":1,"live":[{"key":"net.netfilter.nf_conntrack_max","root":"procfs","rel":"sys/kernel/core_pattern","value":"1"}]}`,
		`{"version":1,"live":[{"key":"nf_conntrack.hashsize","root":"sysfs","rel":"kernel/mm/transparent_hugepage/enabled","value":"never"}]}`,
		`{"version":1,"files":[{"rel":"cron.d/x","existed":false}]}`,
		`{"version":1,"files":[{"rel":"sysctl.d/10-other.conf","existed":false}]}`,
		`not json`,
	} {
		if err := os.WriteFile(r.backupPath(manifestName), []byte(m), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Rollback(r, nil); err == nil || errors.Is(err, ErrNoBackup) {
			t.Errorf("manifest %s: err %v, want a rejection", m, err)
		}
	}
}

func TestDiffLines(t *testing.T) {
	got := strings.Join(diffLines([]string{"a", "b", "c"}, []string{"a", "x", "c", "d"}), "|")
	if got != " a|-b|+x| c|+d" {
		t.Errorf("diff = %q", got)
	}
}

// Inside a network namespace other than the initial one nf_conntrack_max and
// nf_conntrack_buckets are 0444: the plan still writes the files, but never
// tries those values live.
func TestPrepareGlobalReadOnly(t *testing.T) {
	r := fixture(t, "incident-5.15")
	for _, n := range []string{Max, Buckets, Count} {
		if err := os.Chmod(r.SysctlPath(n), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	h := readHost(t, r)
	if h.MaxWritable || h.BucketsWritable {
		t.Fatalf("writable max %v buckets %v", h.MaxWritable, h.BucketsWritable)
	}
	c, err := Prepare(r, Recommend(h, nil, Budget{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range c.Live {
		if !strings.Contains(l.Path, "_timeout_") {
			t.Errorf("live change of a global value: %+v", l)
		}
	}
	if len(c.Live) != 3 {
		t.Errorf("%d live changes, want 3 timeouts", len(c.Live))
	}
	if len(c.NotLive) != 2 || !strings.Contains(c.NotLive[0], "read-only in this network namespace") {
		t.Errorf("not live: %q", c.NotLive)
	}
	sys := ""
	for _, f := range c.Files {
		sys += f.New
	}
	if !strings.Contains(sys, "nf_conntrack_max = 25600") {
		t.Errorf("files lack max:\n%s", sys)
	}
	var b bytes.Buffer
	WriteDiff(&b, c)
	if !strings.Contains(b.String(), "not live (files only): net.netfilter.nf_conntrack_max = 25600") {
		t.Errorf("diff:\n%s", b.String())
	}
}

func TestSysctlConfSymlinkNotTwice(t *testing.T) {
	r := fixture(t, "host-4g")
	if err := os.Symlink("../sysctl.conf", filepath.Join(r.Etc, "sysctl.d", "99-sysctl.conf")); err != nil {
		t.Fatal(err)
	}
	p := Recommend(readHost(t, r), nil, Budget{})
	n := 0
	for _, w := range p.Warnings {
		if strings.Contains(w.Message, "nf_conntrack_max = 65536") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d warnings for sysctl.conf's max, want 1: %+v", n, p.Warnings)
	}
}
