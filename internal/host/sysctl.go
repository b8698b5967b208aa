package host

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ConntrackSysctlPath is where a conntrack sysctl lives, by its file name
// under net/netfilter (for example "nf_conntrack_max"). nf_conntrack_max
// and nf_conntrack_buckets are global; count and the timeouts are per
// network namespace.
func (fs FS) ConntrackSysctlPath(name string) string {
	return fs.Proc("sys", "net", "netfilter", name)
}

// ConntrackSysctl reads one conntrack sysctl by file name. Without
// nf_conntrack loaded (or used in this namespace) the files do not exist:
// the error is then fs.ErrNotExist.
func (fs FS) ConntrackSysctl(name string) (int64, error) {
	return ReadInt(fs.ConntrackSysctlPath(name))
}

// ConntrackSysctlNames lists the file names of the conntrack sysctls
// (nf_conntrack_*) present, in lexical order.
func (fs FS) ConntrackSysctlNames() ([]string, error) {
	ents, err := os.ReadDir(fs.Proc("sys", "net", "netfilter"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "nf_conntrack_") {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// SysctlPath is where a sysctl lives, by its dotted key
// ("net.ipv4.tcp_keepalive_time") or its path under /proc/sys.
func (fs FS) SysctlPath(key string) string {
	return fs.Proc("sys", strings.ReplaceAll(key, ".", "/"))
}

// Sysctl reads one integer sysctl by dotted key.
func (fs FS) Sysctl(key string) (int64, error) { return ReadInt(fs.SysctlPath(key)) }

// ModuleParamPath is where a loaded module's parameter lives under sysfs
// (for example nf_conntrack's hashsize).
func (fs FS) ModuleParamPath(module, param string) string {
	return fs.Sys("module", module, "parameters", param)
}

// ModuleParam reads one integer module parameter.
func (fs FS) ModuleParam(module, param string) (int64, error) {
	return ReadInt(fs.ModuleParamPath(module, param))
}

// Kernel is a kernel release reduced to what changes conntrack defaults.
type Kernel struct {
	Release string `json:"release"`
	Major   int    `json:"major"`
	Minor   int    `json:"minor"`
}

// AtLeast reports whether the kernel is major.minor or newer.
func (k Kernel) AtLeast(major, minor int) bool {
	return k.Major > major || (k.Major == major && k.Minor >= minor)
}

// Kernel reads the kernel release (sys/kernel/osrelease). When the file is
// readable Release is set, even if the version in it cannot be parsed (the
// error says so).
func (fs FS) Kernel() (Kernel, error) {
	path := fs.Proc("sys", "kernel", "osrelease")
	data, err := ReadSmall(path)
	if err != nil {
		return Kernel{}, err
	}
	k, err := parseKernel(data)
	if err != nil {
		return k, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// parseKernel reads osrelease text ("4.9.0-19-amd64").
func parseKernel(data []byte) (Kernel, error) {
	rel := strings.TrimSpace(string(data))
	k := Kernel{Release: rel}
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return k, fmt.Errorf("kernel release %q: want MAJOR.MINOR", rel)
	}
	var err error
	if k.Major, err = strconv.Atoi(parts[0]); err != nil || k.Major <= 0 {
		return k, fmt.Errorf("kernel release %q: bad major version", rel)
	}
	minor := parts[1]
	if i := strings.IndexFunc(minor, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minor = minor[:i]
	}
	if k.Minor, err = strconv.Atoi(minor); err != nil || k.Minor < 0 {
		return k, fmt.Errorf("kernel release %q: bad minor version", rel)
	}
	return k, nil
}
