package tune

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// Parsers for the text files tune reads. They take bytes, never panic, skip
// what they do not understand and return an error only when the file holds
// none of what it must hold; all of them are fuzzed (parse_fuzz_test.go).

// maxLine bounds one line of input: a corrupted or hostile file must not make
// tune allocate without limit.
const maxLine = 64 << 10

func lines(data []byte) *bufio.Scanner {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	return sc
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

// parseKernel reads /proc/sys/kernel/osrelease ("4.9.0-19-amd64").
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

// parseMeminfo returns MemTotal in bytes.
func parseMeminfo(data []byte) (uint64, error) {
	sc := lines(data)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "MemTotal:" {
			continue
		}
		n, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("meminfo MemTotal %q: %w", f[1], err)
		}
		mult := uint64(1)
		if len(f) >= 3 {
			switch strings.ToLower(f[2]) {
			case "kb":
				mult = 1024
			default:
				return 0, fmt.Errorf("meminfo MemTotal unit %q: want kB", f[2])
			}
		}
		if n == 0 || n > (1<<62)/mult {
			return 0, fmt.Errorf("meminfo MemTotal %d: out of range", n)
		}
		return n * mult, nil
	}
	return 0, fmt.Errorf("meminfo: no MemTotal line")
}

// Slab is the nf_conntrack line of /proc/slabinfo.
type Slab struct {
	Name         string `json:"name"`
	ActiveObjs   uint64 `json:"active_objs"`
	ObjSize      uint64 `json:"objsize"`
	ObjPerSlab   uint64 `json:"objperslab"`
	PagesPerSlab uint64 `json:"pagesperslab"`
}

// ObjCost is the memory one object really takes, slab packing included:
// a slab of pagesperslab pages holds objperslab objects.
func (s Slab) ObjCost(pageSize uint64) uint64 {
	if s.ObjPerSlab == 0 || s.PagesPerSlab == 0 {
		return s.ObjSize
	}
	c := s.PagesPerSlab * pageSize / s.ObjPerSlab
	if c < s.ObjSize {
		return s.ObjSize
	}
	return c
}

// isConntrackSlab matches the conntrack object cache: "nf_conntrack" on
// current kernels, "nf_conntrack_<hex netns pointer>" on old ones that had a
// cache per namespace. It must not match nf_conntrack_expect.
func isConntrackSlab(name string) bool {
	if name == "nf_conntrack" {
		return true
	}
	rest, ok := strings.CutPrefix(name, "nf_conntrack_")
	if !ok || rest == "" {
		return false
	}
	_, err := strconv.ParseUint(rest, 16, 64)
	return err == nil
}

// parseSlabinfo finds the conntrack cache in /proc/slabinfo (version 2.x:
// name active_objs num_objs objsize objperslab pagesperslab : ...).
func parseSlabinfo(data []byte) (Slab, error) {
	sc := lines(data)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || !isConntrackSlab(f[0]) {
			continue
		}
		var v [5]uint64
		ok := true
		for i := range v {
			n, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				ok = false
				break
			}
			v[i] = n
		}
		// An object bigger than 1 MiB or smaller than the tuple hash it
		// embeds is not a conntrack entry: a corrupted line.
		if !ok || v[2] < 64 || v[2] > 1<<20 || v[4] > 1024 {
			continue
		}
		return Slab{Name: f[0], ActiveObjs: v[0], ObjSize: v[2], ObjPerSlab: v[3], PagesPerSlab: v[4]}, nil
	}
	return Slab{}, fmt.Errorf("slabinfo: no nf_conntrack cache line")
}

// Setting is one key = value line of a sysctl.d file.
type Setting struct {
	Key   string `json:"key"` // dotted, as in net.netfilter.nf_conntrack_max
	Value string `json:"value"`
	Line  int    `json:"line"`
}

// normalizeKey turns a sysctl.d key into its dotted form and maps the
// init-namespace alias net.nf_conntrack_max onto net.netfilter.nf_conntrack_max
// (both name the same variable).
func normalizeKey(k string) string {
	k = strings.TrimSpace(k)
	k = strings.TrimPrefix(k, "-") // systemd: "-key" ignores a failure to set it
	k = strings.Trim(strings.ReplaceAll(k, "/", "."), ".")
	if k == "net.nf_conntrack_max" {
		return keyPrefix + "nf_conntrack_max"
	}
	return k
}

// parseSysctlConf parses sysctl.d(5) text: "key = value", '#' or ';'
// comments, blank lines. Lines without '=' are ignored, as systemd-sysctl
// ignores them (with a warning).
func parseSysctlConf(data []byte) []Setting {
	var out []Setting
	sc := lines(data)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		key := normalizeKey(k)
		if key == "" || key[0] == '-' || strings.ContainsAny(key, " \t") {
			continue // not a key systemd-sysctl would set either
		}
		out = append(out, Setting{Key: key, Value: strings.TrimSpace(v), Line: n})
	}
	return out
}

// ModOption is one param=value of an "options MODULE ..." line in modprobe.d.
type ModOption struct {
	Module string `json:"module"`
	Param  string `json:"param"`
	Value  string `json:"value"`
	Line   int    `json:"line"`
}

// parseModprobeConf parses modprobe.d(5) "options" lines (with '\'
// continuations). Module names treat '-' and '_' alike, as modprobe does.
func parseModprobeConf(data []byte) []ModOption {
	var out []ModOption
	sc := lines(data)
	n, start := 0, 0
	var cur strings.Builder
	flush := func() {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "options" {
			return
		}
		mod := strings.ReplaceAll(f[1], "-", "_")
		for _, kv := range f[2:] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				continue
			}
			out = append(out, ModOption{Module: mod, Param: k, Value: strings.Trim(v, `"`), Line: start})
		}
	}
	for sc.Scan() {
		n++
		t := sc.Text()
		if cur.Len() == 0 {
			start = n
		}
		if s, ok := strings.CutSuffix(t, `\`); ok {
			cur.WriteString(s)
			cur.WriteByte(' ')
			if cur.Len() > maxLine {
				cur.Reset()
			}
			continue
		}
		cur.WriteString(t)
		flush()
	}
	if cur.Len() > 0 {
		flush()
	}
	return out
}

// parseListen returns the TCP ports listening on a non-loopback address in
// /proc/net/tcp or /proc/net/tcp6 text (state 0A = TCP_LISTEN).
func parseListen(data []byte) []uint16 {
	var out []uint16
	seen := map[uint16]bool{}
	sc := lines(data)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[3] != "0A" {
			continue
		}
		hexAddr, hexPort, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		addr, ok := procAddr(hexAddr)
		if !ok || addr.Unmap().IsLoopback() {
			continue
		}
		p, err := strconv.ParseUint(hexPort, 16, 16)
		if err != nil || p == 0 || seen[uint16(p)] {
			continue
		}
		seen[uint16(p)] = true
		out = append(out, uint16(p))
	}
	return out
}

// procAddr decodes /proc/net/tcp addresses: 32-bit words in host (little
// endian on every architecture ctguard ships for) byte order.
func procAddr(h string) (netip.Addr, bool) {
	b, err := hex.DecodeString(h)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return netip.Addr{}, false
	}
	for i := 0; i+4 <= len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	a, ok := netip.AddrFromSlice(b)
	return a, ok
}

// parseInt reads a single-integer /proc/sys file.
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

// parseFibTrie returns the local IPv4 addresses in /proc/net/fib_trie: a
// "|-- ADDR" leaf followed by a "/32 host LOCAL" line.
// It streams: on a router with a full routing table the file is large.
func parseFibTrie(rd io.Reader) []netip.Addr {
	var out []netip.Addr
	var leaf netip.Addr
	seen := map[netip.Addr]bool{}
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	for sc.Scan() {
		t := strings.TrimSpace(sc.Text())
		if a, ok := strings.CutPrefix(t, "|-- "); ok {
			leaf, _ = netip.ParseAddr(strings.TrimSpace(a))
			continue
		}
		if leaf.Is4() && strings.HasPrefix(t, "/32 host LOCAL") && !seen[leaf] && len(out) < 65536 {
			seen[leaf] = true
			out = append(out, leaf)
		}
	}
	return out
}

// parseIfInet6 returns the addresses of /proc/net/if_inet6 (32 hex digits in
// network order, then index, prefix length, scope, flags, name).
func parseIfInet6(data []byte) []netip.Addr {
	var out []netip.Addr
	sc := lines(data)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 1 || len(f[0]) != 32 {
			continue
		}
		b, err := hex.DecodeString(f[0])
		if err != nil {
			continue
		}
		if a, ok := netip.AddrFromSlice(b); ok {
			out = append(out, a)
		}
	}
	return out
}
