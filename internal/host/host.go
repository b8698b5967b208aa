// Package host reads the facts of this host (this network namespace) that
// ctguard needs from the kernel: the conntrack sysctls, the kernel release,
// RAM and the conntrack slab, the local addresses, the default gateways, the
// resolvers and the TCP sockets, for scan, allow and tune.
//
// Every path is relative to the roots in FS (procfs and sysfs, as
// node_exporter's --path.procfs and --path.sysfs), so that fixture trees stand
// in for a host in tests. It only reads; it never writes anything. Its parsers
// take kernel text, skip what they do not understand and never panic; all of
// them are fuzzed (fuzz_test.go).
package host

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// The real host's roots.
const (
	DefaultProcRoot = "/proc"
	DefaultSysRoot  = "/sys"
)

// FS is where the host's facts are read. The zero value reads the real host.
type FS struct {
	ProcRoot string // default /proc
	SysRoot  string // default /sys
}

// Proc joins elem under the procfs root.
func (fs FS) Proc(elem ...string) string {
	return filepath.Join(append([]string{fs.procRoot()}, elem...)...)
}

// Sys joins elem under the sysfs root.
func (fs FS) Sys(elem ...string) string {
	root := fs.SysRoot
	if root == "" {
		root = DefaultSysRoot
	}
	return filepath.Join(append([]string{root}, elem...)...)
}

// Net is the path of a /proc/net file. With the real /proc it is under
// /proc/thread-self/net, which follows the calling thread's network
// namespace: /proc/net follows the process's main thread, which matters to
// a goroutine locked to a thread that switched namespace.
func (fs FS) Net(name string) string {
	if fs.live() && threadSelf() {
		return filepath.Join(DefaultProcRoot, "thread-self", "net", name)
	}
	return fs.Proc("net", name)
}

func (fs FS) procRoot() string {
	if fs.ProcRoot == "" {
		return DefaultProcRoot
	}
	return fs.ProcRoot
}

// live reports whether the procfs root is the real /proc (not a fixture
// tree, nor another process's /proc/PID).
func (fs FS) live() bool { return filepath.Clean(fs.procRoot()) == DefaultProcRoot }

// threadSelf: /proc/thread-self exists (Linux 3.17 and later).
var threadSelf = sync.OnceValue(func() bool {
	_, err := os.Stat(filepath.Join(DefaultProcRoot, "thread-self", "net"))
	return err == nil
})

// maxSmall bounds what ReadSmall reads.
const maxSmall = 1 << 20

// ReadSmall reads a file of at most 1 MiB: every single-value /proc and
// /sys file, meminfo and slabinfo are far smaller, and a huge file is a
// fixture mistake or hostile, not data. Open and read errors are the
// *fs.PathError of package os (they carry the path).
func ReadSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSmall+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxSmall {
		return nil, fmt.Errorf("%s: larger than 1 MiB", path)
	}
	return data, nil
}

// ReadInt reads a file holding a single integer (a sysctl, a module
// parameter).
func ReadInt(path string) (int64, error) {
	data, err := ReadSmall(path)
	if err != nil {
		return 0, err
	}
	n, err := parseInt(data)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

// maxLine bounds one line of input: a corrupted or hostile file must not
// make a parser allocate without limit.
const maxLine = 64 << 10

func newScanner(r io.Reader) *bufio.Scanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	return sc
}

// lines scans the lines of data; a line longer than maxLine ends the scan.
func lines(data []byte) *bufio.Scanner { return newScanner(bytes.NewReader(data)) }

// withFile opens path for fn. A missing file is the *fs.PathError of os.Open.
func withFile(path string, fn func(io.Reader) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return fn(f)
}

// scanLines calls fn with the fields of each line of r (read from path).
func scanLines(r io.Reader, path string, fn func([]string)) error {
	sc := newScanner(r)
	for sc.Scan() {
		fn(strings.Fields(sc.Text()))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}

// parseInt reads the text of a single-integer file.
func parseInt(data []byte) (int64, error) {
	s := strings.TrimSpace(string(data))
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("not an integer: %q", truncate(s, 40))
	}
	return n, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
