package crowdsec

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ctguard/ctguard/internal/human"
)

// Decision is one of the LAPI's ban decisions on an address or a range, as
// ctguard applies it.
type Decision struct {
	// ID is the LAPI's id of the decision.
	ID int64 `json:"id"`
	// Origin is who made it: crowdsec (an agent), cscli (an operator),
	// CAPI (the community blocklist), lists (a subscribed blocklist), ...
	Origin string `json:"origin"`
	// Scenario is what it was made for (e.g. crowdsecurity/ssh-bf, or an
	// operator's reason).
	Scenario string `json:"scenario"`
	// Scope is ScopeIP or ScopeRange.
	Scope string `json:"scope"`
	// Value is the address or range as the LAPI sent it.
	Value string `json:"value"`
	// Prefix is what to ban: a /32 or /128 for ScopeIP, the masked range
	// for ScopeRange (an IPv4-mapped IPv6 value becomes IPv4).
	Prefix netip.Prefix `json:"prefix"`
	// Remaining is how long the ban still runs, from when it was read
	// (remaining_seconds in JSON).
	Remaining time.Duration `json:"-"`
	// Type is TypeBan: other types are not handed out.
	Type string `json:"type"`
}

// MarshalJSON writes Remaining as remaining_seconds, as ctguard's JSON
// output writes durations.
func (d Decision) MarshalJSON() ([]byte, error) {
	type plain Decision
	return json.Marshal(struct {
		plain
		RemainingSeconds float64 `json:"remaining_seconds"`
	}{plain(d), d.Remaining.Seconds()})
}

// Scopes, types and origins of the LAPI's vocabulary.
const (
	ScopeIP        = "Ip"
	ScopeRange     = "Range"
	TypeBan        = "ban"
	OriginCrowdSec = "crowdsec" // what a watcher's (an agent's) decisions carry
)

// wireDecision is a decision as the LAPI serialises it (its Decision
// model).
type wireDecision struct {
	ID        int64  `json:"id"`
	Origin    string `json:"origin"`
	Type      string `json:"type"`
	Scope     string `json:"scope"`
	Value     string `json:"value"`
	Duration  string `json:"duration"`
	Scenario  string `json:"scenario"`
	Until     string `json:"until,omitempty"`
	UUID      string `json:"uuid,omitempty"`
	Simulated bool   `json:"simulated,omitempty"`
}

// Errors of a stream body.
var (
	errTooLarge = errors.New("body larger than max_body_bytes")
	errNotJSON  = errors.New("not a decisions stream object")
)

// capReader reads at most n bytes of r and fails with errTooLarge when r
// has more.
type capReader struct {
	r io.Reader
	n int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		var one [1]byte
		k, err := c.r.Read(one[:])
		if k > 0 {
			return 0, errTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > c.n {
		p = p[:c.n]
	}
	k, err := c.r.Read(p)
	c.n -= int64(k)
	return k, err
}

// parseStream reads a /v1/decisions/stream body, at most limit bytes, and
// hands every element of its "new" and "deleted" arrays to visit. An
// element of the wrong shape reaches visit with its decoding error (the
// rest of the body still counts); a body that is not such an object, is
// cut short or is too large is an error. Keys other than new and deleted
// are skipped; null arrays are empty.
func parseStream(r io.Reader, limit int64, visit func(deleted bool, w wireDecision, bad error)) error {
	dec := json.NewDecoder(&capReader{r: r, n: limit})
	dec.UseNumber()
	if err := expectDelim(dec, '{'); err != nil {
		return err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return streamErr(err)
		}
		key, _ := tok.(string)
		switch key {
		case "new", "deleted":
			if err := parseList(dec, key == "deleted", visit); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return streamErr(err)
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			return fmt.Errorf("%w: data after the object", errNotJSON)
		}
		return streamErr(err)
	}
	return nil
}

func parseList(dec *json.Decoder, deleted bool, visit func(bool, wireDecision, error)) error {
	tok, err := dec.Token()
	if err != nil {
		return streamErr(err)
	}
	if tok == nil {
		return nil // null
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return fmt.Errorf("%w: want an array, got %v", errNotJSON, tok)
	}
	for dec.More() {
		var w *wireDecision
		err := dec.Decode(&w)
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &te):
			if w == nil {
				w = &wireDecision{}
			}
			visit(deleted, *w, err)
		case err != nil:
			return streamErr(err)
		case w == nil:
			visit(deleted, wireDecision{}, errors.New("null"))
		default:
			visit(deleted, *w, nil)
		}
	}
	return expectDelim(dec, ']')
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return streamErr(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("%w: want %q, got %v", errNotJSON, want, tok)
	}
	return nil
}

// streamErr names a body cut short or not JSON.
func streamErr(err error) error {
	var se *json.SyntaxError
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: cut short", errNotJSON)
	case errors.As(err, &se):
		return fmt.Errorf("%w: %v (at byte %d)", errNotJSON, se, se.Offset)
	}
	return err
}

// Why a decision from the LAPI is not applied.
type skip int

const (
	keep          skip = iota
	skipType           // not a ban
	skipScope          // not an address or a range
	skipSimulated      // made in simulation mode
	skipOwn            // this host's own
	skipOrigin         // its origin is filtered out
	skipScenario       // its scenario is filtered out
	skipInvalid        // value or duration that does not parse
	skipExpired        // no time left
	skipTooBroad       // a range broader than the local limit
	numSkips
)

var skipNames = [numSkips]string{"kept", "not a ban", "scope", "simulated", "own", "origin", "scenario", "invalid", "expired", "too broad"}

func (s skip) String() string {
	if s >= 0 && s < numSkips {
		return skipNames[s]
	}
	return "?"
}

// filter decides which decisions are applied.
type filter struct {
	origins          map[string]bool // lower-cased; nil keeps all
	scenarios        []string
	excludeScenarios []string
	ownScenarios     []string
	minV4, minV6     int
}

func newFilter(c *Config) filter {
	f := filter{
		scenarios:        c.Scenarios,
		excludeScenarios: c.ExcludeScenarios,
		ownScenarios:     c.OwnScenarios,
		minV4:            c.MinPrefixV4,
		minV6:            c.MinPrefixV6,
	}
	if len(c.Origins) > 0 {
		f.origins = map[string]bool{}
		for _, o := range c.Origins {
			f.origins[strings.ToLower(o)] = true
		}
	}
	return f
}

// translate turns a wire decision into a Decision, or says why not (the
// Decision is filled in from skipTooBroad on, for reports and for
// expired ones). masked reports a range value that had host bits set (it
// is kept, masked).
func (f *filter) translate(w wireDecision) (d Decision, why skip, masked bool, err error) {
	if !strings.EqualFold(w.Type, TypeBan) {
		return d, skipType, false, nil
	}
	var scope string
	switch {
	case strings.EqualFold(w.Scope, ScopeIP):
		scope = ScopeIP
	case strings.EqualFold(w.Scope, ScopeRange):
		scope = ScopeRange
	default:
		return d, skipScope, false, nil
	}
	if w.Simulated {
		return d, skipSimulated, false, nil
	}
	if matchAny(f.ownScenarios, w.Scenario) {
		return d, skipOwn, false, nil
	}
	if f.origins != nil && !f.origins[strings.ToLower(w.Origin)] {
		return d, skipOrigin, false, nil
	}
	if len(f.scenarios) > 0 && !matchAny(f.scenarios, w.Scenario) || matchAny(f.excludeScenarios, w.Scenario) {
		return d, skipScenario, false, nil
	}
	p, masked, err := parseValue(scope, w.Value)
	if err != nil {
		return d, skipInvalid, false, err
	}
	left, err := human.ParseDuration(w.Duration)
	if err != nil {
		return d, skipInvalid, false, fmt.Errorf("duration %q: not a duration", clip(w.Duration))
	}
	d = Decision{
		ID:        w.ID,
		Origin:    w.Origin,
		Scenario:  w.Scenario,
		Scope:     scope,
		Value:     w.Value,
		Prefix:    p,
		Remaining: left,
		Type:      TypeBan,
	}
	limit, key := f.minV4, "min_prefix_v4"
	if p.Addr().Is6() {
		limit, key = f.minV6, "min_prefix_v6"
	}
	if p.Bits() < limit {
		return d, skipTooBroad, masked, fmt.Errorf("%s is broader than /%d (%s)", p, limit, key)
	}
	if left <= 0 {
		return d, skipExpired, masked, nil
	}
	return d, keep, masked, nil
}

// parseValue reads an Ip value (an address, or a full-length prefix) or a
// Range value (a CIDR, masked when it has host bits: masked says so). An
// IPv4-mapped IPv6 address or range becomes IPv4, as the LAPI itself
// treats it; zones are refused.
func parseValue(scope, v string) (p netip.Prefix, masked bool, err error) {
	s := strings.TrimSpace(v)
	if scope == ScopeIP {
		if strings.Contains(s, "/") {
			q, err := netip.ParsePrefix(s)
			if err != nil || q.Bits() != q.Addr().BitLen() {
				return p, false, fmt.Errorf("Ip value %q: not an address", clip(v))
			}
			s = q.Addr().String()
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return p, false, fmt.Errorf("Ip value %q: not an address", clip(v))
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), false, nil
	}
	q, err := netip.ParsePrefix(s)
	if err != nil {
		// A Range value without a length is one address.
		a, aerr := netip.ParseAddr(s)
		if aerr != nil || a.Zone() != "" {
			return p, false, fmt.Errorf("Range value %q: not a CIDR", clip(v))
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), false, nil
	}
	if q.Addr().Is4In6() {
		if q.Bits() < 96 {
			return p, false, fmt.Errorf("Range value %q: an IPv4-mapped range shorter than /96", clip(v))
		}
		q = netip.PrefixFrom(q.Addr().Unmap(), q.Bits()-96)
	}
	m := q.Masked()
	return m, m != q, nil
}

// clip shortens a value quoted in a report.
func clip(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	for i := n; i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			return s[:i] + "..."
		}
	}
	return "..."
}

// matchAny reports whether s matches one of the patterns.
func matchAny(patterns []string, s string) bool {
	for _, p := range patterns {
		if glob(p, s) {
			return true
		}
	}
	return false
}

// glob matches s against pattern, case-insensitively: * is any run of
// bytes (slashes included), ? one character, everything else itself.
func glob(pattern, s string) bool {
	p, t := strings.ToLower(pattern), strings.ToLower(s)
	var pi, ti int
	star, mark := -1, 0
	for ti < len(t) {
		switch {
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, ti
			pi++
		case pi < len(p) && p[pi] == '?':
			_, n := utf8.DecodeRuneInString(t[ti:])
			pi++
			ti += n
		case pi < len(p) && p[pi] == t[ti]:
			pi++
			ti++
		case star >= 0:
			pi = star + 1
			mark++
			ti = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
