package main

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

var snakeCase = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)

// tagProblems walks a type the way encoding/json does and reports json tags
// that are not snake_case (view snake-cases untagged Go names itself).
func tagProblems(t reflect.Type, path string, seen map[reflect.Type]bool) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || seen[t] || t.Implements(jsonMarshalerType) || t.Implements(textMarshalerType) {
		return nil
	}
	seen[t] = true
	defer delete(seen, t)
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" && !snakeCase.MatchString(name) {
			out = append(out, path+"."+f.Name+": key "+name+" is not snake_case")
		}
		out = append(out, tagProblems(f.Type, path+"."+f.Name, seen)...)
	}
	return out
}

// Every command's --json output follows one convention: snake_case keys,
// durations in seconds, and a schema version, time and command at the top.
func TestJSONConvention(t *testing.T) {
	for name, v := range map[string]any{
		"status":       statusReport{},
		"top":          topJSON{},
		"list":         listJSON{},
		"list-allow":   allowlistJSON{},
		"why":          whyJSON{},
		"tune":         tuneJSON{},
		"tune-restore": rollbackJSON{},
		"ban":          actionJSON{},
		"version":      versionJSON{},
		"config-check": checkJSON{},
	} {
		typ := reflect.TypeOf(v)
		for _, p := range tagProblems(typ, name, map[reflect.Type]bool{}) {
			t.Errorf("%s", p)
		}
		b, err := json.Marshal(view(v))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !regexp.MustCompile(`^\{"schema":\d+,"time":[^,]+,"command":`).Match(b) {
			t.Errorf("%s does not start with schema and time: %.80s", name, b)
		}
	}
}

func TestView(t *testing.T) {
	type inner struct {
		Window      time.Duration
		HalfOpen    int `json:"half_open"`
		MaxTTL      *time.Duration
		Skipped     string        `json:"-"`
		Empty       []int         `json:",omitempty"`
		ElevatedETA time.Duration `json:"elevated_eta"`
	}
	type outer struct {
		envelope
		Target netip.Prefix `json:"target"`
		At     time.Time    `json:"at"`
		Unset  time.Time    `json:"unset"`
		Inner  inner        `json:"inner"`
		Map    map[netip.Addr]inner
		Ptr    *inner `json:"ptr,omitempty"`
	}
	ttl := 2 * time.Hour
	loc := time.FixedZone("X", 3600)
	v := outer{envelope: envelope{Schema: 1, Time: time.Date(2026, 12, 3, 15, 0, 0, 0, time.UTC), Command: "why"},
		Target: netip.MustParsePrefix("198.51.100.0/24"), At: time.Date(2026, 12, 3, 16, 0, 0, 0, loc),
		Inner: inner{Window: 90 * time.Second, HalfOpen: 3, MaxTTL: &ttl, Skipped: "x", ElevatedETA: time.Minute},
		Map:   map[netip.Addr]inner{netip.MustParseAddr("192.0.2.1"): {}}}
	b, err := json.Marshal(view(v))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"schema":1,"time":"2026-12-03T15:00:00Z","command":"why","target":"198.51.100.0/24","at":"2026-12-03T15:00:00Z","unset":null,` +
		`"inner":{"window_seconds":90,"half_open":3,"max_ttl_seconds":7200,"elevated_eta_seconds":60},` +
		`"map":{"192.0.2.1":{"window_seconds":0,"half_open":0,"max_ttl_seconds":null,"elevated_eta_seconds":0}}}`
	if string(b) != want {
		t.Errorf("view:\n got %s\nwant %s", b, want)
	}
	for in, want := range map[string]string{"ElevatedETA": "elevated_eta", "TTLSeconds": "ttl_seconds", "WideV4Bits": "wide_v4_bits",
		"MaxBansPerCycle": "max_bans_per_cycle", "ID": "id", "IdleServed": "idle_served"} {
		if got := snake(in); got != want {
			t.Errorf("snake(%s) = %s, want %s", in, got, want)
		}
	}
}
