// Package monitor samples the victim namespace's conntrack table every tick:
// count and max, kernel drop counters, state counts (less often: they need a
// full table walk) and the defense's ban list. It runs inside the victim
// namespace and writes wire records; it never changes anything.
package monitor

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Stats are the kernel's cumulative conntrack counters, summed over CPUs.
type Stats struct {
	Drop, EarlyDrop, InsertFailed int64
}

// ParseProcStat parses /proc/net/stat/nf_conntrack: a header of column names
// and one line of hex numbers per CPU.
func ParseProcStat(r io.Reader) (Stats, error) {
	sc := bufio.NewScanner(r)
	if !sc.Scan() {
		return Stats{}, fmt.Errorf("stat: empty")
	}
	cols := strings.Fields(sc.Text())
	idx := map[string]int{}
	for i, c := range cols {
		idx[c] = i
	}
	for _, c := range []string{"drop", "early_drop", "insert_failed"} {
		if _, ok := idx[c]; !ok {
			return Stats{}, fmt.Errorf("stat: no %q column in %q", c, sc.Text())
		}
	}
	var s Stats
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != len(cols) {
			return Stats{}, fmt.Errorf("stat: %d fields, header has %d", len(f), len(cols))
		}
		get := func(c string) (int64, error) {
			v, err := strconv.ParseInt(f[idx[c]], 16, 64)
			if err != nil {
				return 0, fmt.Errorf("stat: %s: %w", c, err)
			}
			return v, nil
		}
		d, err := get("drop")
		if err != nil {
			return Stats{}, err
		}
		e, err := get("early_drop")
		if err != nil {
			return Stats{}, err
		}
		i, err := get("insert_failed")
		if err != nil {
			return Stats{}, err
		}
		s.Drop += d
		s.EarlyDrop += e
		s.InsertFailed += i
	}
	return s, sc.Err()
}

// ParseConntrackS parses `conntrack -S` output: one line per CPU with
// key=value pairs.
func ParseConntrackS(r io.Reader) (Stats, error) {
	var s Stats
	sc := bufio.NewScanner(r)
	lines := 0
	for sc.Scan() {
		for _, kv := range strings.Fields(sc.Text()) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				continue
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				continue // cpu=0 etc. are fine, anything else is not a counter we use
			}
			switch k {
			case "drop":
				s.Drop += n
			case "early_drop":
				s.EarlyDrop += n
			case "insert_failed":
				s.InsertFailed += n
			}
		}
		lines++
	}
	if lines == 0 {
		return s, fmt.Errorf("conntrack -S: no output")
	}
	return s, sc.Err()
}

// State names used in state counts besides the TCP states.
const (
	StateUDPUnreplied = "UDP_UNREPLIED"
	StateUDP          = "UDP"
	StateOther        = "OTHER"
)

var tcpStates = map[string]bool{
	"SYN_SENT": true, "SYN_RECV": true, "ESTABLISHED": true, "FIN_WAIT": true, "CLOSE_WAIT": true,
	"LAST_ACK": true, "TIME_WAIT": true, "CLOSE": true, "SYN_SENT2": true,
}

// Counts is one walk of the table: entries per state, and entries whose
// original source lies in the given attack ranges (the entries the attack
// holds at that moment, whatever the defense did).
type Counts struct {
	States     map[string]int64
	AttackHeld int64
}

// CountStates counts entries per state in /proc/net/nf_conntrack or
// `conntrack -L` text: TCP lines by their state, UDP lines as UDP or
// UDP_UNREPLIED, everything else as OTHER. Lines whose first src= is in one
// of attack also count in AttackHeld.
func CountStates(r io.Reader, attack []netip.Prefix) (Counts, error) {
	out := Counts{States: map[string]int64{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 {
			continue
		}
		proto := ""
		state := ""
		unreplied := false
		src := ""
		for i, w := range f {
			if i < 4 && (w == "tcp" || w == "udp") && proto == "" {
				proto = w
			}
			if proto == "tcp" && state == "" && tcpStates[w] {
				state = w
			}
			if w == "[UNREPLIED]" {
				unreplied = true
			}
			if src == "" && strings.HasPrefix(w, "src=") {
				src = w[len("src="):]
			}
		}
		switch {
		case proto == "tcp" && state != "":
			out.States[state]++
		case proto == "udp" && unreplied:
			out.States[StateUDPUnreplied]++
		case proto == "udp":
			out.States[StateUDP]++
		default:
			out.States[StateOther]++
		}
		if src != "" && len(attack) > 0 {
			if a, err := netip.ParseAddr(src); err == nil {
				for _, p := range attack {
					if p.Contains(a.Unmap()) {
						out.AttackHeld++
						break
					}
				}
			}
		}
	}
	return out, sc.Err()
}

// ParseIPSetSave returns the addresses and prefixes in `ipset save`
// output for the given sets ("add SET MEMBER [timeout N] ..." lines),
// sorted. Prefixes (hash:net members) are masked to their network.
func ParseIPSetSave(r io.Reader, sets ...string) ([]string, error) {
	bySet, err := ParseIPSetSaveBySet(r, sets...)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range bySet {
		out = append(out, m...)
	}
	sort.Strings(out)
	return out, nil
}

// ParseIPSetSaveBySet is ParseIPSetSave per set name.
func ParseIPSetSaveBySet(r io.Reader, sets ...string) (map[string][]string, error) {
	want := map[string]bool{}
	for _, s := range sets {
		want[s] = true
	}
	out := map[string][]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[0] != "add" || !want[f[1]] {
			continue
		}
		m, err := ipsetMember(f[2])
		if err != nil {
			return nil, fmt.Errorf("ipset save: set %s: %w", f[1], err)
		}
		out[f[1]] = append(out[f[1]], m)
	}
	for _, m := range out {
		sort.Strings(m)
	}
	return out, sc.Err()
}

// ipsetMember canonicalizes a hash:ip or hash:net member: an address, or
// a prefix (a host prefix prints as its address, as ctguard's nftables
// sets do).
func ipsetMember(s string) (string, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().String(), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return "", fmt.Errorf("member %q: not an address or prefix", s)
	}
	p = p.Masked()
	if p.IsSingleIP() {
		return p.Addr().String(), nil
	}
	return p.String(), nil
}
