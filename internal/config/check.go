package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Problem is one thing wrong with a configuration file.
type Problem struct {
	Line int    // 1-based; 0 when the key is not in the file (a default, or a relation of keys)
	Key  string // dotted, e.g. daemon.poll
	Msg  string
}

func (p Problem) String() string {
	if p.Line > 0 {
		return fmt.Sprintf("line %d: %s", p.Line, p.Msg)
	}
	return p.Msg
}

// Check reads path and reports every problem in it at once: a syntax error
// (the parser stops there), each unknown key with a suggestion, and each
// bad value, with its line where the file sets it. No problems: the file
// is valid and Load would take it.
func Check(path string) ([]Problem, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return check(b), nil
}

func check(b []byte) []Problem {
	c := Default()
	md, err := toml.Decode(string(b), &c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			msg := pe.Message
			if pe.LastKey != "" {
				msg = pe.LastKey + ": " + msg
			}
			return []Problem{{Line: pe.Position.Line, Key: pe.LastKey, Msg: msg}}
		}
		// A value of the wrong type stops the decoder too; its message
		// names the line.
		p := Problem{Msg: strings.TrimPrefix(err.Error(), "toml: ")}
		if m := lineRe.FindStringSubmatch(err.Error()); m != nil {
			p.Line, _ = strconv.Atoi(m[1])
			p.Msg = strings.TrimSpace(strings.TrimPrefix(p.Msg, m[0]))
		}
		return []Problem{p}
	}
	text := string(b)
	var out []Problem
	known := knownKeys()
	for _, k := range md.Undecoded() {
		key := k.String()
		msg := "unknown key " + key
		if s := closest(key, known); s != "" {
			msg += fmt.Sprintf(" (did you mean %s?)", s)
		}
		out = append(out, Problem{Line: lineOf(text, key), Key: key, Msg: msg})
	}
	if err := c.Validate(); err != nil {
		for _, e := range unjoin(err) {
			key := keyOf(e.Error())
			out = append(out, Problem{Line: lineOf(text, key), Key: key, Msg: e.Error()})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Line < out[j].Line })
	return out
}

// Show writes c as TOML: the effective configuration, defaults merged.
func Show(w io.Writer, c Config) error {
	return toml.NewEncoder(w).Encode(c)
}

// knownKeys lists every dotted key the configuration takes.
func knownKeys() []string {
	var b bytes.Buffer
	_ = toml.NewEncoder(&b).Encode(Default())
	var m map[string]any
	md, err := toml.Decode(b.String(), &m)
	if err != nil {
		return nil
	}
	var out []string
	for _, k := range md.Keys() {
		out = append(out, k.String())
	}
	return out
}

// keyOf takes the dotted key a validation message starts with
// ("daemon.interval[2] (critical) = ..." -> daemon.interval).
func keyOf(msg string) string {
	k := strings.FieldsFunc(msg, func(r rune) bool { return r == ' ' || r == '[' || r == ':' || r == ',' })
	if len(k) == 0 {
		return ""
	}
	return k[0]
}

var (
	tableRe = regexp.MustCompile(`^\s*\[+\s*([A-Za-z0-9_.\-]+)\s*\]+`)
	keyRe   = regexp.MustCompile(`^\s*([A-Za-z0-9_.\-]+)\s*=`)
	lineRe  = regexp.MustCompile(`^toml: line (\d+)`)
)

// lineOf finds the line that sets a dotted key in a TOML text; 0 if none.
func lineOf(text, key string) int {
	table := ""
	for i, l := range strings.Split(text, "\n") {
		if m := tableRe.FindStringSubmatch(l); m != nil {
			table = m[1]
			if table == key {
				return i + 1
			}
			continue
		}
		if m := keyRe.FindStringSubmatch(l); m != nil {
			full := m[1]
			if table != "" {
				full = table + "." + m[1]
			}
			if full == key {
				return i + 1
			}
		}
	}
	return 0
}

// closest is the known key nearest to key by edit distance, if close
// enough to be a typo.
func closest(key string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(key, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
