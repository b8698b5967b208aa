package tune

import (
	"bufio"
	"bytes"
	"strings"
)

// Parsers for the configuration files tune reads (sysctl.d, modprobe.d).
// They take bytes, never panic and skip what they do not understand; both
// are fuzzed (parse_fuzz_test.go). What the kernel prints (osrelease,
// meminfo, slabinfo, /proc/net) is read and parsed by package host.

// maxLine bounds one line of input: a corrupted or hostile file must not make
// tune allocate without limit.
const maxLine = 64 << 10

func lines(data []byte) *bufio.Scanner {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	return sc
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
