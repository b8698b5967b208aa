// Command mkdeb builds ctguard's Debian package from a built binary, the
// man pages and the files in packaging/, with nFPM as a library: no
// dpkg-deb, no debhelper. `make deb` runs it; see README.md, "Install from
// the Debian package", for what the package contains and why.
//
// It is its own Go module (tools/mkdeb/go.mod) so that nFPM and its
// dependencies never enter the main module's go.mod.
package main

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

const (
	pkgName     = "ctguard"
	homepage    = "https://github.com/ctguard/ctguard"
	copyrightBy = "The ctguard authors"
	description = `guard the Linux conntrack table against exhaustion
ctguard keeps a server's conntrack table from filling up. Bots that open
connections, complete the handshake and go silent leave ESTABLISHED entries
the kernel keeps for days and never evicts early; once the table is full,
new connections (ssh included) fail. ctguard reads the table over
ctnetlink, forecasts when it will be full, shows which sources and prefixes
hold it, bans them before conntrack with kernel-expiring nftables sets and
purges their entries, explaining every decision.

The service is installed but neither enabled nor started: try
"ctguard run --dry-run" first, then "systemctl enable --now ctguard".`
)

// The unit in packaging/ is written for `make install` (PREFIX=/usr/local);
// the package puts the binary in /usr/sbin.
const (
	unitBinary = "/usr/local/sbin/ctguard"
	debBinary  = "/usr/sbin/ctguard"
)

type options struct {
	root, bin, manDir, complDir, outDir string
	version, goarch, goarm, maintainer  string
}

func main() {
	log := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "mkdeb: "+format+"\n", a...) }
	var o options
	flag.StringVar(&o.root, "root", "../..", "the repository's top directory")
	flag.StringVar(&o.bin, "bin", "", "the static ctguard binary (default ROOT/bin/ctguard, from make build)")
	flag.StringVar(&o.manDir, "man", "", "directory of the man pages ctguard.8 and ctguard-COMMAND.8 (default ROOT/build/man, from make man)")
	flag.StringVar(&o.complDir, "completions", "", "directory with ctguard.bash, _ctguard and ctguard.fish (default: run BIN completion bash|zsh|fish, which needs BIN to run here)")
	flag.StringVar(&o.outDir, "out", "", "where the package goes (default ROOT/dist)")
	flag.StringVar(&o.version, "version", "", "the output of git describe --tags --always --dirty (default: run it in ROOT)")
	flag.StringVar(&o.goarch, "arch", "", "GOARCH of the binary (default $GOARCH, else this tool's)")
	flag.StringVar(&o.goarm, "goarm", "", "GOARM of the binary when -arch is arm (5 or 6: armel; 7 or none: armhf)")
	flag.StringVar(&o.maintainer, "maintainer", "ctguard maintainers <ctguard@users.noreply.github.com>", "the Maintainer field")
	flag.Parse()
	if flag.NArg() != 0 {
		log("unexpected arguments %q", flag.Args())
		os.Exit(2)
	}
	path, err := run(o)
	if err != nil {
		log("%v", err)
		os.Exit(1)
	}
	st, err := os.Stat(path)
	if err != nil {
		log("%v", err)
		os.Exit(1)
	}
	// Named from the repository's top when it is inside it (dist/...).
	if root, err := filepath.Abs(o.root); err == nil {
		if rel, err := filepath.Rel(root, path); err == nil && !strings.HasPrefix(rel, "..") {
			path = rel
		}
	}
	fmt.Printf("%s (%d bytes)\n", path, st.Size())
}

func run(o options) (string, error) {
	root, err := filepath.Abs(o.root)
	if err != nil {
		return "", err
	}
	in := func(p *string, def string) {
		if *p == "" {
			*p = filepath.Join(root, def)
		}
	}
	in(&o.bin, "bin/ctguard")
	in(&o.manDir, "build/man")
	in(&o.outDir, "dist")
	for _, p := range []*string{&o.bin, &o.manDir, &o.outDir, &o.complDir} {
		if *p != "" {
			if *p, err = filepath.Abs(*p); err != nil {
				return "", err
			}
		}
	}
	if o.version == "" {
		out, err := exec.Command("git", "-C", root, "describe", "--tags", "--always", "--dirty").Output()
		if err != nil {
			return "", fmt.Errorf("git describe in %s: %w (pass -version)", root, err)
		}
		o.version = strings.TrimSpace(string(out))
	}
	if o.goarch == "" {
		o.goarch = os.Getenv("GOARCH")
	}
	if o.goarch == "" {
		o.goarch = runtime.GOARCH
	}

	version, err := debVersion(o.version)
	if err != nil {
		return "", err
	}
	arch, err := goArchToDeb(o.goarch, o.goarm)
	if err != nil {
		return "", err
	}
	mtime, err := sourceDate(root)
	if err != nil {
		return "", err
	}
	if err := checkBinary(o.bin, o.goarch); err != nil {
		return "", err
	}
	manPages, err := listManPages(o.manDir)
	if err != nil {
		return "", err
	}

	stage, err := os.MkdirTemp("", "mkdeb-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(stage)
	write := func(name string, data []byte) (string, error) {
		p := filepath.Join(stage, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", err
		}
		return p, os.WriteFile(p, data, 0o644)
	}

	var contents files.Contents
	add := func(src, dst string, mode os.FileMode, typ string) {
		contents = append(contents, &files.Content{
			Source: src, Destination: dst, Type: typ,
			FileInfo: &files.ContentFileInfo{Owner: "root", Group: "root", Mode: mode, MTime: mtime},
		})
	}
	doc := "/usr/share/doc/" + pkgName

	// The binary, the unit and the configuration.
	add(o.bin, debBinary, 0o755, "")
	unit, err := debUnit(filepath.Join(root, "packaging/ctguard.service"))
	if err != nil {
		return "", err
	}
	p, err := write("ctguard.service", unit)
	if err != nil {
		return "", err
	}
	add(p, "/lib/systemd/system/ctguard.service", 0o644, "")
	conf := filepath.Join(root, "packaging/ctguard.toml")
	add(conf, "/etc/ctguard/ctguard.toml", 0o644, files.TypeConfig)
	add(conf, doc+"/examples/ctguard.toml", 0o644, "")

	// Man pages and shell completions.
	for _, m := range manPages {
		raw, err := os.ReadFile(m)
		if err != nil {
			return "", err
		}
		p, err := write("man/"+filepath.Base(m)+".gz", gz(raw))
		if err != nil {
			return "", err
		}
		add(p, "/usr/share/man/man8/"+filepath.Base(m)+".gz", 0o644, "")
	}
	compl, err := completions(o.bin, o.complDir)
	if err != nil {
		return "", err
	}
	for _, c := range compl {
		p, err := write("completions/"+filepath.Base(c.dst), c.data)
		if err != nil {
			return "", err
		}
		add(p, c.dst, 0o644, "")
	}

	// Documentation: files over 4 kB are compressed, as dh_compress does.
	docs := []string{filepath.Join(root, "README.md")}
	more, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	sort.Strings(more)
	docs = append(docs, more...)
	for _, d := range docs {
		raw, err := os.ReadFile(d)
		if err != nil {
			return "", fmt.Errorf("documentation: %w", err)
		}
		rel, _ := filepath.Rel(root, d)
		rel = filepath.ToSlash(rel)
		if len(raw) > 4096 {
			p, err := write("doc/"+rel+".gz", gz(raw))
			if err != nil {
				return "", err
			}
			add(p, doc+"/"+rel+".gz", 0o644, "")
		} else {
			add(d, doc+"/"+rel, 0o644, "")
		}
	}
	// The upstream changelog, under the name Debian gives it.
	if raw, err := os.ReadFile(filepath.Join(root, "CHANGELOG.md")); err == nil {
		if p, err = write("doc/changelog.gz", gz(raw)); err != nil {
			return "", err
		}
		add(p, doc+"/changelog.gz", 0o644, "")
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if err := checkLicense(root); err != nil {
		return "", err
	}
	modCache, goroot, err := goEnv()
	if err != nil {
		return "", err
	}
	cr, err := copyrightFile(o.bin, modCache, goroot, homepage, copyrightBy)
	if err != nil {
		return "", err
	}
	if p, err = write("copyright", []byte(cr)); err != nil {
		return "", err
	}
	add(p, doc+"/copyright", 0o644, "")
	if p, err = write("changelog.Debian.gz", gz([]byte(changelog(version, o.version, o.maintainer, mtime)))); err != nil {
		return "", err
	}
	add(p, doc+"/changelog.Debian.gz", 0o644, "")
	add(filepath.Join(root, "packaging/debian/lintian-overrides"), "/usr/share/lintian/overrides/"+pkgName, 0o644, "")

	upstream, revision, _ := strings.Cut(version, "-")
	info := &nfpm.Info{
		Name:          pkgName,
		Arch:          arch,
		Platform:      "linux",
		Version:       upstream,
		Release:       revision,
		VersionSchema: "none",
		Section:       "net",
		Priority:      "optional",
		Maintainer:    o.maintainer,
		Description:   description,
		Homepage:      homepage,
		License:       "Apache-2.0",
		MTime:         mtime,
		Overridables: nfpm.Overridables{
			// Nothing at run time: the binary is static and talks netlink
			// itself. nft is only for looking at (or lifting) the bans by hand.
			Suggests: []string{"nftables"},
			Contents: contents,
			Umask:    0o022,
			Scripts: nfpm.Scripts{
				PostInstall: filepath.Join(root, "packaging/debian/postinst"),
				PreRemove:   filepath.Join(root, "packaging/debian/prerm"),
				PostRemove:  filepath.Join(root, "packaging/debian/postrm"),
			},
			Deb: nfpm.Deb{Compression: "xz"},
		},
	}
	info = nfpm.WithDefaults(info)
	info.VersionSchema = "none"
	if err := nfpm.Validate(info); err != nil {
		return "", fmt.Errorf("package definition: %w", err)
	}

	if err := os.MkdirAll(o.outDir, 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(o.outDir, fmt.Sprintf("%s_%s_%s.deb", pkgName, version, arch))
	tmp, err := os.CreateTemp(o.outDir, ".mkdeb-*.deb")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if err := deb.Default.Package(info, tmp); err != nil {
		tmp.Close()
		return "", fmt.Errorf("building the package: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", err
	}
	return out, nil
}

// sourceDate is the time stamped on every file: SOURCE_DATE_EPOCH if set,
// else the last commit's time, so that a rebuild of the same commit gives
// the same package.
func sourceDate(root string) (time.Time, error) {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", s, err)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	out, err := exec.Command("git", "-C", root, "log", "-1", "--format=%ct").Output()
	if err != nil {
		return time.Now().UTC().Truncate(time.Second), nil
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("git log -1 --format=%%ct: %q: %w", out, err)
	}
	return time.Unix(n, 0).UTC(), nil
}

var elfMachine = map[string]elf.Machine{
	"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "386": elf.EM_386, "arm": elf.EM_ARM,
	"riscv64": elf.EM_RISCV, "s390x": elf.EM_S390, "ppc64le": elf.EM_PPC64, "ppc64": elf.EM_PPC64,
	"loong64": elf.EM_LOONGARCH, "mips64le": elf.EM_MIPS, "mipsle": elf.EM_MIPS,
}

// checkBinary makes sure the package gets what it promises: an executable
// for the package's architecture that needs no shared library (the package
// has no Depends).
func checkBinary(bin, goarch string) error {
	f, err := elf.Open(bin)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s is missing: run 'make build' first", bin)
		}
		return fmt.Errorf("%s: not an ELF executable: %w", bin, err)
	}
	defer f.Close()
	if want, ok := elfMachine[goarch]; ok && f.Machine != want {
		return fmt.Errorf("%s is built for %v, but the package is for GOARCH=%s", bin, f.Machine, goarch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (it has a program interpreter); the package ships it without dependencies, so build it static (CGO_ENABLED=0, as 'make build' does)", bin)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		return fmt.Errorf("%s needs shared libraries %v; build it static (CGO_ENABLED=0, as 'make build' does)", bin, libs)
	}
	return nil
}

// listManPages returns the section-8 pages in dir; ctguard.8 must be one.
func listManPages(dir string) ([]string, error) {
	pages, err := filepath.Glob(filepath.Join(dir, "*.8"))
	if err != nil {
		return nil, err
	}
	if len(pages) == 0 {
		return nil, fmt.Errorf("no man pages (*.8) in %s: run 'make man' first, which writes ctguard.8 and ctguard-COMMAND.8 there", dir)
	}
	found := false
	for _, p := range pages {
		if filepath.Base(p) == "ctguard.8" {
			found = true
		}
	}
	if !found {
		return nil, fmt.Errorf("%s has man pages but no ctguard.8: run 'make man' again", dir)
	}
	sort.Strings(pages)
	return pages, nil
}

type generated struct {
	dst  string
	data []byte
}

// completions are the cobra completion scripts, where Debian's shells
// look for them.
func completions(bin, dir string) ([]generated, error) {
	shells := []struct{ shell, file, dst string }{
		{"bash", "ctguard.bash", "/usr/share/bash-completion/completions/ctguard"},
		{"zsh", "_ctguard", "/usr/share/zsh/vendor-completions/_ctguard"},
		{"fish", "ctguard.fish", "/usr/share/fish/vendor_completions.d/ctguard.fish"},
	}
	var out []generated
	for _, s := range shells {
		var data []byte
		if dir != "" {
			var err error
			if data, err = os.ReadFile(filepath.Join(dir, s.file)); err != nil {
				return nil, fmt.Errorf("completions: %w", err)
			}
		} else {
			cmd := exec.Command(bin, "completion", s.shell)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			var err error
			if data, err = cmd.Output(); err != nil {
				return nil, fmt.Errorf("'%s completion %s' failed (%v: %s): the binary must have cobra's completion command; for a binary that cannot run here, pass -completions DIR",
					bin, s.shell, err, strings.TrimSpace(stderr.String()))
			}
		}
		if !bytes.Contains(data, []byte("ctguard")) {
			return nil, fmt.Errorf("the %s completion script does not mention ctguard: %.60q", s.shell, data)
		}
		out = append(out, generated{dst: s.dst, data: data})
	}
	return out, nil
}

// debUnit is packaging/ctguard.service with the binary in /usr/sbin and,
// since the package ships the man pages, a Documentation= line pointing at
// them (`systemctl help ctguard`).
func debUnit(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if !bytes.Contains(raw, []byte("ExecStart="+unitBinary+" ")) {
		return nil, fmt.Errorf("%s: no 'ExecStart=%s ...' line to point at %s", path, unitBinary, debBinary)
	}
	// Only the Exec*= lines: the comments are about `make install`.
	lines := bytes.SplitAfter(raw, []byte("\n"))
	for i, l := range lines {
		if bytes.HasPrefix(l, []byte("Exec")) {
			lines[i] = bytes.ReplaceAll(l, []byte(unitBinary), []byte(debBinary))
		} else if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) && bytes.Contains(l, []byte("/usr/local/")) {
			return nil, fmt.Errorf("%s: %q names /usr/local/, which the package does not have", path, bytes.TrimSpace(l))
		}
	}
	out := bytes.Join(lines, nil)
	if !bytes.Contains(out, []byte("\nDocumentation=")) {
		desc := regexp.MustCompile(`(?m)^Description=.*\n`)
		loc := desc.FindIndex(out)
		if loc == nil {
			return nil, fmt.Errorf("%s: no Description= line to put Documentation= after", path)
		}
		doc := []byte("Documentation=man:ctguard(8) man:ctguard-run(8) " + homepage + "\n")
		out = append(out[:loc[1]:loc[1]], append(doc, out[loc[1]:]...)...)
	}
	return out, nil
}

// checkLicense refuses a LICENSE at the top that is not the Apache
// License 2.0 the copyright file names (it is fine to have none yet).
func checkLicense(root string) error {
	raw, err := os.ReadFile(filepath.Join(root, "LICENSE"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if names := classify(string(raw)); len(names) != 1 || names[0] != "Apache-2.0" {
		return fmt.Errorf("LICENSE is not the Apache License 2.0 that the package's copyright file names: update tools/mkdeb")
	}
	return nil
}

func goEnv() (modCache, goroot string, err error) {
	goBin := "go"
	if p := os.Getenv("GO"); p != "" {
		goBin = p
	}
	out, err := exec.Command(goBin, "env", "GOMODCACHE", "GOROOT").Output()
	if err != nil {
		return "", "", fmt.Errorf("go env GOMODCACHE GOROOT: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 {
		return "", "", fmt.Errorf("go env GOMODCACHE GOROOT: unexpected output %q", out)
	}
	return strings.TrimSpace(lines[0]), strings.TrimSpace(lines[1]), nil
}

// gz compresses as Debian wants: best compression, no name, no time stamp
// (lintian: package-contains-timestamped-gzip).
func gz(data []byte) []byte {
	var b bytes.Buffer
	w, err := gzip.NewWriterLevel(&b, gzip.BestCompression)
	if err != nil {
		panic(err)
	}
	w.Write(data) //nolint:errcheck // a bytes.Buffer does not fail
	w.Close()     //nolint:errcheck
	return b.Bytes()
}

// changelog is a one-entry Debian changelog for this build.
func changelog(version, describe, maintainer string, when time.Time) string {
	return fmt.Sprintf("%s (%s) unstable; urgency=medium\n\n  * Package built by tools/mkdeb from git %s.\n\n -- %s  %s\n",
		pkgName, version, describe, maintainer, when.Format("Mon, 02 Jan 2006 15:04:05 -0700"))
}
