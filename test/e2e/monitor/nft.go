package monitor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"sort"
	"strings"
)

// ParseNFTSets returns every address and prefix in the sets of an
// `nft -j list table ...` document (ctguard keeps its bans in such sets),
// sorted. Elements may be plain strings, prefixes, ranges, or wrapped in
// {"elem": {"val": ...}} when they carry timeouts. Sets of other types
// (ctguard's set of SSH ports) are skipped.
func ParseNFTSets(r io.Reader) ([]string, error) {
	bySet, err := ParseNFTSetElems(r)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, v := range bySet {
		out = append(out, v...)
	}
	sort.Strings(out)
	return out, nil
}

// ParseNFTSetElems is ParseNFTSets per set name.
func ParseNFTSetElems(r io.Reader) (map[string][]string, error) {
	out, _, err := ParseNFTTable(r)
	return out, err
}

// ParseNFTTable is ParseNFTSetElems plus the packets dropped by the
// table's rules that count and drop (ctguard's `... @ban4 counter drop`).
func ParseNFTTable(r io.Reader) (map[string][]string, int64, error) {
	var doc struct {
		Nftables []struct {
			Set *struct {
				Name string            `json:"name"`
				Type json.RawMessage   `json:"type"`
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
			Rule *struct {
				Expr []map[string]json.RawMessage `json:"expr"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.NewDecoder(r).Decode(&doc); err != nil {
		return nil, 0, fmt.Errorf("nft json: %w", err)
	}
	out := map[string][]string{}
	var drops int64
	for _, o := range doc.Nftables {
		if o.Rule != nil {
			drops += ruleDrops(o.Rule.Expr)
		}
		if o.Set == nil {
			continue
		}
		if len(o.Set.Type) > 0 {
			var typ string
			if json.Unmarshal(o.Set.Type, &typ) != nil || (typ != "ipv4_addr" && typ != "ipv6_addr") {
				continue // ports, marks, concatenations: not bans of addresses
			}
		}
		for _, raw := range o.Set.Elem {
			v, err := nftValue(raw)
			if err != nil {
				return nil, 0, fmt.Errorf("set %s: %w", o.Set.Name, err)
			}
			out[o.Set.Name] = append(out[o.Set.Name], v)
		}
	}
	return out, drops, nil
}

// ruleDrops is the packet counter of a rule that drops, 0 for any other.
func ruleDrops(exprs []map[string]json.RawMessage) int64 {
	var packets int64
	counted, drops := false, false
	for _, e := range exprs {
		if c, ok := e["counter"]; ok {
			var v struct {
				Packets int64 `json:"packets"`
			}
			if json.Unmarshal(c, &v) == nil {
				packets, counted = v.Packets, true
			}
		}
		if _, ok := e["drop"]; ok {
			drops = true
		}
	}
	if counted && drops {
		return packets
	}
	return 0
}

func nftValue(raw json.RawMessage) (string, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return "", fmt.Errorf("element %q: %w", s, err)
		}
		return a.String(), nil
	}
	var obj struct {
		Elem *struct {
			Val json.RawMessage `json:"val"`
		} `json:"elem"`
		Prefix *struct {
			Addr string `json:"addr"`
			Len  int    `json:"len"`
		} `json:"prefix"`
		Range []string `json:"range"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return "", fmt.Errorf("element %s: %w", raw, err)
	}
	switch {
	case obj.Elem != nil:
		return nftValue(obj.Elem.Val)
	case obj.Prefix != nil:
		p, err := netip.ParsePrefix(fmt.Sprintf("%s/%d", obj.Prefix.Addr, obj.Prefix.Len))
		if err != nil {
			return "", err
		}
		return p.String(), nil
	case len(obj.Range) == 2:
		return strings.Join(obj.Range, "-"), nil
	}
	return "", fmt.Errorf("element %s: unknown shape", raw)
}

// readNFTTable lists a table's address set elements per set and the
// packets its drop rules dropped; a missing table (the defense has not set
// up yet) is an empty ban list.
func readNFTTable(ctx context.Context, table string) (map[string][]string, int64, error) {
	args := append([]string{"-j", "list", "table"}, strings.Fields(table)...)
	cmd := exec.CommandContext(ctx, "nft", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		if strings.Contains(errb.String(), "No such file or directory") {
			return nil, 0, nil
		}
		return nil, 0, fmt.Errorf("nft list table %s: %w: %s", table, err, strings.TrimSpace(errb.String()))
	}
	return ParseNFTTable(&out)
}
