// Package tune advises, applies and rolls back conntrack sizing and timeouts
// for one host: it reads the facts (kernel, RAM, table size, entry size,
// timeouts, config files and agents that also set them), turns them with the
// observed idle times of live connections into a Plan (a pure function), and
// writes only files it owns, keeping a backup of everything it replaces.
//
// Every path is relative to the roots in Roots, so that the whole package,
// --apply and --rollback included, runs on fixture trees; package host reads
// the facts under /proc and /sys. It must never write outside
// <etc>/{sysctl.d,modprobe.d,modules-load.d,ctguard} and the live /proc/sys
// and /sys/module values it recorded in its backup.
package tune

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/ctguard/ctguard/internal/host"
)

// Roots are the directories standing in for /proc, /sys and /etc.
type Roots struct {
	Procfs string
	Sysfs  string
	Etc    string
	// Rules is where the firewall's rule sets come from: LiveRules runs
	// iptables-save, ip6tables-save and nft list ruleset; a directory
	// holds their saved output (files iptables-save, ip6tables-save, nft,
	// each optional); "" reads none.
	Rules string
}

// DefaultRoots are the real host's.
func DefaultRoots() Roots {
	return Roots{Procfs: host.DefaultProcRoot, Sysfs: host.DefaultSysRoot, Etc: "/etc", Rules: LiveRules}
}

// facts is where package host reads the facts under /proc and /sys.
func (r Roots) facts() host.FS { return host.FS{ProcRoot: r.Procfs, SysRoot: r.Sysfs} }

const (
	keyPrefix = "net.netfilter."
	// The sysctl names tune reads and may set, without keyPrefix.
	Max         = "nf_conntrack_max"
	Buckets     = "nf_conntrack_buckets"
	Count       = "nf_conntrack_count"
	Established = "nf_conntrack_tcp_timeout_established"
	SynSent     = "nf_conntrack_tcp_timeout_syn_sent"
	SynRecv     = "nf_conntrack_tcp_timeout_syn_recv"
	TimeWait    = "nf_conntrack_tcp_timeout_time_wait"
	CloseWait   = "nf_conntrack_tcp_timeout_close_wait"
	FinWait     = "nf_conntrack_tcp_timeout_fin_wait"
	Unacked     = "nf_conntrack_tcp_timeout_unacknowledged"
	MaxRetrans  = "nf_conntrack_tcp_timeout_max_retrans"
	UDP         = "nf_conntrack_udp_timeout"
	UDPStream   = "nf_conntrack_udp_timeout_stream"
	// Hashsize is the nf_conntrack module parameter (not a sysctl).
	Hashsize = "hashsize"
)

// ErrNoConntrack means nf_conntrack is not loaded (or not in use in this
// network namespace): there is nothing to read.
var ErrNoConntrack = errors.New("nf_conntrack is not loaded here (no nf_conntrack_max)")

// ConfFile is one sysctl.d / sysctl.conf / modprobe.d file and what it sets.
type ConfFile struct {
	Path     string      `json:"path"` // as seen on the host, e.g. /etc/sysctl.d/99-x.conf
	Settings []Setting   `json:"settings,omitempty"`
	Options  []ModOption `json:"options,omitempty"`
}

// Agent is another program on the host that sets conntrack values itself.
type Agent struct {
	Name     string `json:"name"` // kube-proxy, docker
	Evidence string `json:"evidence"`
}

// Kernel is a kernel release reduced to what changes conntrack defaults.
type Kernel = host.Kernel

// Slab is the nf_conntrack line of /proc/slabinfo.
type Slab = host.Slab

// Host is what tune knows about the machine. Zero values mean "unknown".
type Host struct {
	Kernel   Kernel           `json:"kernel"`
	MemTotal uint64           `json:"mem_total_bytes"`
	PageSize uint64           `json:"page_size"`
	Sysctl   map[string]int64 `json:"sysctl"` // short names (Max, Established...) -> live value
	// net.ipv4.tcp_keepalive_{time,intvl,probes} of this namespace (0: unknown).
	KeepaliveTime   int64 `json:"tcp_keepalive_time,omitempty"`
	KeepaliveIntvl  int64 `json:"tcp_keepalive_intvl,omitempty"`
	KeepaliveProbes int64 `json:"tcp_keepalive_probes,omitempty"`
	Slab            *Slab `json:"slab,omitempty"`
	HashsizeParam   int64 `json:"hashsize_param"` // /sys/module/nf_conntrack/parameters/hashsize
	// BucketsWritable: nf_conntrack_buckets is a writable sysctl here (newer
	// kernels, initial namespace). Then sysctl.d can size the hash table and
	// no modprobe option (with its 8x default max) is needed.
	BucketsWritable bool `json:"buckets_writable"`
	// MaxWritable: nf_conntrack_max can be set here. It is read-only (0444)
	// in every network namespace but the initial one: max, buckets and
	// hashsize are global.
	MaxWritable   bool       `json:"max_writable"`
	SysctlFiles   []ConfFile `json:"sysctl_files,omitempty"`
	ModprobeFiles []ConfFile `json:"modprobe_files,omitempty"`
	Agents        []Agent    `json:"agents,omitempty"`
	// NAT lists address-translating firewall rules (a few, as evidence).
	NAT []string `json:"nat_rules,omitempty"`
	// CPUs is the number of online CPUs (0: unknown): kube-proxy sizes
	// nf_conntrack_max per core.
	CPUs        int      `json:"cpus,omitempty"`
	ListenPorts []uint16 `json:"listen_ports,omitempty"` // TCP, on a non-loopback address
	Notes       []string `json:"notes,omitempty"`        // what could not be read
}

// SysctlPath is where a short sysctl name lives under the procfs root.
func (r Roots) SysctlPath(name string) string { return r.facts().ConntrackSysctlPath(name) }

// HashsizePath is the module parameter under the sysfs root.
func (r Roots) HashsizePath() string { return r.facts().ModuleParamPath("nf_conntrack", Hashsize) }

// etcPath maps a host path under /etc onto the etc root.
func (r Roots) etcPath(rel ...string) string {
	return filepath.Join(append([]string{r.Etc}, rel...)...)
}

// ReadHost gathers the facts. Kernel version, MemTotal and nf_conntrack_max
// are required; everything else degrades to a note.
func ReadHost(r Roots) (*Host, error) {
	hf := r.facts()
	h := &Host{Sysctl: map[string]int64{}, PageSize: 4096}
	var err error
	if h.Kernel, err = hf.Kernel(); err != nil {
		return nil, fmt.Errorf("read kernel version: %w", err)
	}
	if h.MemTotal, err = hf.MemTotal(); err != nil {
		return nil, fmt.Errorf("read RAM size: %w", err)
	}

	for _, name := range []string{Max, Buckets, Count, Established, SynSent, SynRecv, TimeWait,
		CloseWait, FinWait, Unacked, MaxRetrans, UDP, UDPStream} {
		v, err := hf.ConntrackSysctl(name)
		switch {
		case err == nil:
			h.Sysctl[name] = v
		case name == Max && errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("%s: %w", r.SysctlPath(name), ErrNoConntrack)
		case name == Max:
			return nil, fmt.Errorf("read %s: %w", name, err)
		default:
			h.Notes = append(h.Notes, fmt.Sprintf("%s unreadable: %v", name, err))
		}
	}
	if st, err := os.Stat(r.SysctlPath(Max)); err == nil {
		h.MaxWritable = st.Mode().Perm()&0o222 != 0
	}
	if st, err := os.Stat(r.SysctlPath(Buckets)); err == nil {
		h.BucketsWritable = h.MaxWritable && st.Mode().Perm()&0o222 != 0
	}
	h.KeepaliveTime, _ = hf.Sysctl("net.ipv4.tcp_keepalive_time")
	h.KeepaliveIntvl, _ = hf.Sysctl("net.ipv4.tcp_keepalive_intvl")
	h.KeepaliveProbes, _ = hf.Sysctl("net.ipv4.tcp_keepalive_probes")

	// /proc/slabinfo is root-only (0400): without it tune uses an estimate.
	var pe *fs.PathError
	switch s, err := hf.ConntrackSlab(); {
	case err == nil:
		h.Slab = &s
	case errors.As(err, &pe):
		h.Notes = append(h.Notes, fmt.Sprintf("slabinfo unreadable (%v): entry size estimated", pe.Err))
	default:
		h.Notes = append(h.Notes, err.Error())
	}
	if v, err := hf.ModuleParam("nf_conntrack", Hashsize); err == nil {
		h.HashsizeParam = v
	}

	h.SysctlFiles = readConfDir(r, "sysctl.d", parseSysctlConfFile)
	if f, ok := readConf(r, "sysctl.conf", parseSysctlConfFile); ok {
		h.SysctlFiles = append(h.SysctlFiles, f)
	}
	h.ModprobeFiles = readConfDir(r, "modprobe.d", func(d []byte, f *ConfFile) { f.Options = parseModprobeConf(d) })
	h.Agents = findAgents(r)
	readRules(r, h)
	h.CPUs = onlineCPUs(r)
	// Errors leave the list empty: it only refines the advice.
	_ = hf.TCPSockets(func(s host.Socket) {
		if p := s.Local.Port(); s.State == host.TCPListen && p != 0 &&
			!s.Local.Addr().Unmap().IsLoopback() && !containsPort(h.ListenPorts, p) {
			h.ListenPorts = append(h.ListenPorts, p)
		}
	})
	sort.Slice(h.ListenPorts, func(i, j int) bool { return h.ListenPorts[i] < h.ListenPorts[j] })
	return h, nil
}

// onlineCPUs counts the CPUs in <sysfs>/devices/system/cpu/online ("0-3,8"),
// 0 when unreadable.
func onlineCPUs(r Roots) int {
	data, err := host.ReadSmall(filepath.Join(r.Sysfs, "devices/system/cpu/online"))
	if err != nil {
		return 0
	}
	n := 0
	for _, part := range strings.Split(strings.TrimSpace(string(data)), ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0
			}
		}
		n += b - a + 1
	}
	return n
}

func containsPort(ps []uint16, p uint16) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

func errShort(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func parseSysctlConfFile(d []byte, f *ConfFile) { f.Settings = parseSysctlConf(d) }

func readConf(r Roots, rel string, parse func([]byte, *ConfFile)) (ConfFile, bool) {
	data, err := host.ReadSmall(r.etcPath(rel))
	if err != nil {
		return ConfFile{}, false
	}
	f := ConfFile{Path: "/etc/" + rel}
	parse(data, &f)
	return f, true
}

// readConfDir reads <etc>/<dir>/*.conf in the order the boot tools apply
// them (lexical by file name); the ones ctguard owns are included, marked by
// their names.
func readConfDir(r Roots, dir string, parse func([]byte, *ConfFile)) []ConfFile {
	ents, err := os.ReadDir(r.etcPath(dir))
	if err != nil {
		return nil
	}
	var out []ConfFile
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".conf") {
			continue
		}
		// Debian links /etc/sysctl.d/99-sysctl.conf to ../sysctl.conf,
		// which is read on its own: do not report its settings twice.
		if e.Type()&fs.ModeSymlink != 0 {
			if target, err := os.Readlink(r.etcPath(dir, e.Name())); err == nil && filepath.Base(target) == "sysctl.conf" {
				continue
			}
		}
		if f, ok := readConf(r, dir+"/"+e.Name(), parse); ok {
			out = append(out, f)
		}
	}
	return out
}

// findAgents looks for programs known to set conntrack values themselves:
// kube-proxy (sets nf_conntrack_max, hashsize and the established and
// close_wait timeouts at start) and Docker (loads nf_conntrack and NATs
// container traffic). It only reads: comm files of processes and config paths.
func findAgents(r Roots) []Agent {
	var out []Agent
	add := func(name, ev string) {
		for _, a := range out {
			if a.Name == name {
				return
			}
		}
		out = append(out, Agent{Name: name, Evidence: ev})
	}
	hf := r.facts()
	if ents, err := os.ReadDir(hf.Proc()); err == nil {
		n := 0
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err != nil {
				continue
			}
			if n++; n > 100000 { // bound the walk
				break
			}
			data, err := host.ReadSmall(hf.Proc(e.Name(), "comm"))
			if err != nil {
				continue // processes come and go
			}
			switch comm := strings.TrimSpace(string(data)); comm {
			case "kube-proxy":
				add("kube-proxy", "process "+comm+" (pid "+e.Name()+")")
			case "dockerd":
				add("docker", "process "+comm+" (pid "+e.Name()+")")
			}
		}
	}
	for _, c := range []struct{ name, rel string }{
		{"kube-proxy", "kubernetes/kube-proxy.conf"},
		{"kube-proxy", "kubernetes/kube-proxy.yaml"},
		{"kube-proxy", "kubernetes/manifests/kube-proxy.yaml"},
		{"docker", "docker/daemon.json"},
	} {
		if _, err := os.Stat(r.etcPath(c.rel)); err == nil {
			add(c.name, "/etc/"+c.rel)
		}
	}
	return out
}

// LocalAddrs lists the addresses of this network namespace: with the real
// /proc the calling thread's (over rtnetlink), under a fixture procfs root
// the tree's net/fib_trie and net/if_inet6 (see host.FS.LocalAddrs).
func LocalAddrs(procfs string) ([]netip.Addr, error) {
	ps, err := host.FS{ProcRoot: procfs}.LocalAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, len(ps))
	for i, p := range ps {
		out[i] = p.Addr()
	}
	return out, nil
}

// ReadSysctl reads one live conntrack sysctl by short name.
func (r Roots) ReadSysctl(name string) (int64, error) { return r.facts().ConntrackSysctl(name) }
