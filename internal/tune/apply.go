package tune

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ctguard/ctguard/internal/host"
)

// The files ctguard owns. The sysctl file sorts before 99-sysctl.conf (and
// before kube or cloud files numbered 95-99) on purpose: it must not silently
// override what an operator put there; tune warns about those instead.
const (
	SysctlFile      = "90-ctguard-conntrack.conf"
	ModprobeFile    = "ctguard-conntrack.conf"
	ModulesLoadFile = "ctguard-conntrack.conf"
	backupDir       = "ctguard/tune-backup"
	manifestName    = "manifest.json"
)

// ErrNoBackup means there is nothing to roll back.
var ErrNoBackup = errors.New("no tune backup found (nothing applied, or already rolled back)")

// FileChange is one file tune writes, restores or removes.
type FileChange struct {
	Path    string `json:"path"` // host path, /etc/...
	rel     string // relative to the etc root
	Old     string `json:"old,omitempty"`
	New     string `json:"new,omitempty"`
	Existed bool   `json:"existed"`
	Remove  bool   `json:"remove,omitempty"`
}

// LiveChange is one value written to /proc/sys or /sys/module.
type LiveChange struct {
	Key  string `json:"key"`
	Path string `json:"path"` // host path
	root string // "procfs" or "sysfs"
	rel  string
	Old  string `json:"old"`
	New  string `json:"new"`
	Err  string `json:"error,omitempty"`
}

// Change is what an apply or a rollback will do.
type Change struct {
	Files []FileChange `json:"files"`
	Live  []LiveChange `json:"live"`
	// NotLive lists changes that only the files carry, and why.
	NotLive []string `json:"not_live,omitempty"`
	// Refused lists recommended changes left out because another agent
	// owns the value (kube-proxy), and what to do instead.
	Refused []string `json:"refused,omitempty"`
}

// Empty reports whether the change does nothing (Refused changes nothing).
func (c Change) Empty() bool { return len(c.Files) == 0 && len(c.Live) == 0 }

func (r Roots) root(name string) string {
	if name == "sysfs" {
		return r.Sysfs
	}
	return r.Procfs
}

func hostRoot(name string) string {
	if name == "sysfs" {
		return "/sys"
	}
	return "/proc"
}

// liveSpec maps an item onto its live file.
func liveSpec(it Item) (root, rel string) {
	if it.Kind == "module" {
		return "sysfs", "module/nf_conntrack/parameters/hashsize"
	}
	return "procfs", "sys/net/netfilter/" + it.Name
}

// Prepare works out the files and live values an apply of the plan's
// changes writes. Items are applied in plan order except that hashsize goes
// first (a bigger table should have its buckets before its entries).
func Prepare(r Roots, p Plan) (Change, error) {
	var c Change
	items := append([]Item(nil), p.Items...)
	first := func(it Item) bool { return it.Kind == "module" || it.Name == Buckets }
	sort.SliceStable(items, func(i, j int) bool { return first(items[i]) && !first(items[j]) })

	ownSysctl, _ := host.ReadSmall(r.etcPath("sysctl.d", SysctlFile))
	ownMod, _ := host.ReadSmall(r.etcPath("modprobe.d", ModprobeFile))
	inOwn := map[string]bool{}
	for _, s := range parseSysctlConf(ownSysctl) {
		inOwn[s.Key] = true
	}
	for _, o := range parseModprobeConf(ownMod) {
		if o.Module == "nf_conntrack" && o.Param == Hashsize {
			inOwn["nf_conntrack."+Hashsize] = true
		}
	}

	var sysctl, mod strings.Builder
	sysctl.WriteString("# Written by ctguard tune: conntrack sizing and timeouts. Undo: ctguard tune --rollback\n")
	mod.WriteString("# Written by ctguard tune. Undo: ctguard tune --rollback\n")
	nSysctl, nMod := 0, 0
	for _, it := range items {
		// An agent that sets the value at start would overwrite it: leave it
		// out, files included (an earlier apply's line goes too).
		if it.Owner != "" {
			if it.Change {
				c.Refused = append(c.Refused, fmt.Sprintf("%s = %d: %s sets it when it starts and would overwrite it; change %s's configuration instead",
					it.Key, it.Recommended, it.Owner, it.Owner))
			}
			continue
		}
		// Keys written by an earlier apply stay in the file even when the
		// live value already matches, or a reboot would undo them.
		if !it.Change && !inOwn[it.Key] {
			continue
		}
		if it.Kind == "module" {
			fmt.Fprintf(&mod, "options nf_conntrack hashsize=%d\n", it.Recommended)
			nMod++
		} else {
			fmt.Fprintf(&sysctl, "%s = %d\n", it.Key, it.Recommended)
			nSysctl++
		}
		if it.Change && it.NotLive != "" {
			c.NotLive = append(c.NotLive, fmt.Sprintf("%s = %d: %s", it.Key, it.Recommended, it.NotLive))
		} else if it.Change {
			root, rel := liveSpec(it)
			c.Live = append(c.Live, LiveChange{Key: it.Key, Path: filepath.Join(hostRoot(root), rel), root: root, rel: rel,
				Old: strconv.FormatInt(it.Current, 10), New: strconv.FormatInt(it.Recommended, 10)})
		}
	}
	want := map[string]string{}
	if nSysctl > 0 {
		want["sysctl.d/"+SysctlFile] = sysctl.String()
		// sysctl.d skips net.netfilter.* keys when nf_conntrack is not loaded
		// yet; systemd-modules-load runs before systemd-sysctl.
		want["modules-load.d/"+ModulesLoadFile] = "# Written by ctguard tune: load nf_conntrack before sysctl.d applies its keys.\nnf_conntrack\n"
	}
	if nMod > 0 {
		want["modprobe.d/"+ModprobeFile] = mod.String()
	}
	rels := make([]string, 0, len(want))
	for rel := range want {
		rels = append(rels, rel)
	}
	sort.Strings(rels)
	for _, rel := range rels {
		old, err := host.ReadSmall(r.etcPath(rel))
		existed := err == nil
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return Change{}, fmt.Errorf("read %s: %w", rel, err)
		}
		if existed && string(old) == want[rel] {
			continue
		}
		c.Files = append(c.Files, FileChange{Path: "/etc/" + rel, rel: rel, Old: string(old), New: want[rel], Existed: existed})
	}
	return c, nil
}

type manifest struct {
	Version int          `json:"version"`
	Created time.Time    `json:"created"`
	Files   []backupFile `json:"files"`
	Live    []backupLive `json:"live"`
}

type backupFile struct {
	Rel     string      `json:"rel"` // relative to the etc root
	Existed bool        `json:"existed"`
	Backup  string      `json:"backup,omitempty"` // file name in the backup dir
	Mode    fs.FileMode `json:"mode,omitempty"`
}

type backupLive struct {
	Key   string `json:"key"`
	Root  string `json:"root"` // procfs or sysfs
	Rel   string `json:"rel"`
	Value string `json:"value"`
}

func (r Roots) backupPath(name ...string) string {
	return r.etcPath(append([]string{backupDir}, name...)...)
}

func readManifest(r Roots) (*manifest, error) {
	data, err := host.ReadSmall(r.backupPath(manifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoBackup
	}
	if err != nil {
		return nil, fmt.Errorf("read tune backup: %w", err)
	}
	var m manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("read tune backup %s: %w", r.backupPath(manifestName), err)
	}
	// A rollback writes only what tune writes: an edited manifest must not
	// turn it into a tool that writes anything as root.
	for _, f := range m.Files {
		if !managedFile(f.Rel) || (f.Backup != "" && strings.ContainsAny(f.Backup, `/\`)) {
			return nil, fmt.Errorf("tune backup %s: %q is not a file tune writes", r.backupPath(manifestName), f.Rel)
		}
	}
	for _, l := range m.Live {
		if !managedLive(l.Key, l.Root, l.Rel) {
			return nil, fmt.Errorf("tune backup %s: %s (%s %q) is not a value tune sets", r.backupPath(manifestName), l.Key, l.Root, l.Rel)
		}
	}
	return &m, nil
}

// managedFile: the files under <etc> that Apply writes.
func managedFile(rel string) bool {
	switch rel {
	case "sysctl.d/" + SysctlFile, "modprobe.d/" + ModprobeFile, "modules-load.d/" + ModulesLoadFile:
		return true
	}
	return false
}

// managedLive: the live values Apply sets (liveSpec): the conntrack
// sysctls under net.netfilter and the module's hashsize.
func managedLive(key, root, rel string) bool {
	if root == "sysfs" {
		return rel == "module/nf_conntrack/parameters/hashsize" && key == "nf_conntrack."+Hashsize
	}
	name, ok := strings.CutPrefix(rel, "sys/net/netfilter/nf_conntrack_")
	if root != "procfs" || !ok || name == "" || key != "net.netfilter.nf_conntrack_"+name {
		return false
	}
	for _, c := range name {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// writeAtomic writes via a temporary file and rename, so a crash leaves
// either the old or the new file.
func writeAtomic(path string, data []byte, mode fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// writeLive writes a value to an existing /proc/sys or /sys file; it never
// creates one.
func writeLive(path, value string) error {
	// O_TRUNC as a shell redirection does: procfs ignores it, fixture files need it.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(value + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func backupName(rel string) string { return strings.ReplaceAll(rel, "/", "__") }

// Apply backs up what c replaces, then writes the files and the live
// values. The backup (manifest first) is on disk before anything changes; a
// second apply keeps the first one's originals, so rollback always returns to
// the state before ctguard touched the host. Live values that cannot be set
// (read-only in a network namespace, missing) are reported in the returned
// Change, not fatal.
func Apply(r Roots, c Change, log *slog.Logger) (Change, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := readManifest(r)
	switch {
	case errors.Is(err, ErrNoBackup):
		m = &manifest{Version: 1, Created: time.Now().UTC()}
	case err != nil:
		return c, err
	}
	haveFile := map[string]bool{}
	for _, f := range m.Files {
		haveFile[f.Rel] = true
	}
	haveLive := map[string]bool{}
	for _, l := range m.Live {
		haveLive[l.Root+"/"+l.Rel] = true
	}
	if err := os.MkdirAll(r.backupPath(), 0o700); err != nil {
		return c, fmt.Errorf("create tune backup dir: %w", err)
	}
	for _, f := range c.Files {
		if haveFile[f.rel] {
			continue
		}
		b := backupFile{Rel: f.rel}
		if st, err := os.Stat(r.etcPath(f.rel)); err == nil {
			data, err := host.ReadSmall(r.etcPath(f.rel))
			if err != nil {
				return c, fmt.Errorf("back up %s: %w", f.Path, err)
			}
			b.Existed, b.Backup, b.Mode = true, backupName(f.rel), st.Mode().Perm()
			if err := writeAtomic(r.backupPath(b.Backup), data, 0o600); err != nil {
				return c, fmt.Errorf("back up %s: %w", f.Path, err)
			}
		}
		m.Files = append(m.Files, b)
	}
	for _, l := range c.Live {
		if haveLive[l.root+"/"+l.rel] {
			continue
		}
		// Record what is live now, not what the plan saw.
		data, err := host.ReadSmall(filepath.Join(r.root(l.root), l.rel))
		if err != nil {
			continue // nothing to restore; the write below reports it
		}
		m.Live = append(m.Live, backupLive{Key: l.Key, Root: l.root, Rel: l.rel, Value: strings.TrimSpace(string(data))})
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return c, fmt.Errorf("encode tune backup: %w", err)
	}
	if err := writeAtomic(r.backupPath(manifestName), append(data, '\n'), 0o600); err != nil {
		return c, fmt.Errorf("write tune backup: %w", err)
	}

	for _, f := range c.Files {
		if err := writeAtomic(r.etcPath(f.rel), []byte(f.New), 0o644); err != nil {
			return c, fmt.Errorf("write %s: %w (backup in %s)", f.Path, err, r.backupPath())
		}
		log.Info("wrote file", "path", f.Path)
	}
	for i := range c.Live {
		l := &c.Live[i]
		if err := writeLive(filepath.Join(r.root(l.root), l.rel), l.New); err != nil {
			l.Err = errShort(err)
			log.Warn("live value not applied", "key", l.Key, "err", err)
			continue
		}
		log.Info("applied live", "key", l.Key, "old", l.Old, "new", l.New)
	}
	return c, nil
}

// PrepareRollback works out what Rollback will do, from the backup.
func PrepareRollback(r Roots) (Change, error) {
	m, err := readManifest(r)
	if err != nil {
		return Change{}, err
	}
	var c Change
	for i := len(m.Live) - 1; i >= 0; i-- {
		l := m.Live[i]
		cur, _ := host.ReadSmall(filepath.Join(r.root(l.Root), l.Rel))
		c.Live = append(c.Live, LiveChange{Key: l.Key, Path: filepath.Join(hostRoot(l.Root), l.Rel), root: l.Root, rel: l.Rel,
			Old: strings.TrimSpace(string(cur)), New: l.Value})
	}
	for _, f := range m.Files {
		cur, err := host.ReadSmall(r.etcPath(f.Rel))
		fc := FileChange{Path: "/etc/" + f.Rel, rel: f.Rel, Old: string(cur), Existed: err == nil}
		if f.Existed {
			orig, err := host.ReadSmall(r.backupPath(f.Backup))
			if err != nil {
				return Change{}, fmt.Errorf("tune backup of %s: %w", fc.Path, err)
			}
			fc.New = string(orig)
		} else {
			fc.Remove = true
		}
		c.Files = append(c.Files, fc)
	}
	return c, nil
}

// Rollback restores the live values and files recorded by Apply (the
// values in reverse order of application) and removes the backup. On any
// failure the backup stays, so a rollback can be retried.
func Rollback(r Roots, log *slog.Logger) (Change, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := PrepareRollback(r)
	if err != nil {
		return c, err
	}
	m, err := readManifest(r)
	if err != nil {
		return c, err
	}
	modes := map[string]fs.FileMode{}
	for _, f := range m.Files {
		modes[f.Rel] = f.Mode
	}
	var errs []error
	for i := range c.Live {
		l := &c.Live[i]
		if err := writeLive(filepath.Join(r.root(l.root), l.rel), l.New); err != nil {
			l.Err = errShort(err)
			errs = append(errs, fmt.Errorf("restore %s: %w", l.Key, err))
			continue
		}
		log.Info("restored live", "key", l.Key, "value", l.New)
	}
	for _, f := range c.Files {
		var err error
		if f.Remove {
			if err = os.Remove(r.etcPath(f.rel)); errors.Is(err, fs.ErrNotExist) {
				err = nil
			}
		} else {
			mode := modes[f.rel]
			if mode == 0 {
				mode = 0o644
			}
			err = writeAtomic(r.etcPath(f.rel), []byte(f.New), mode)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("restore %s: %w", f.Path, err))
			continue
		}
		log.Info("restored file", "path", f.Path, "removed", f.Remove)
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("rollback incomplete, backup kept in %s: %w", r.backupPath(), errors.Join(errs...))
	}
	if err := os.RemoveAll(r.backupPath()); err != nil {
		return c, fmt.Errorf("remove tune backup: %w", err)
	}
	return c, nil
}
