package crowdsec

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ctguard/ctguard/internal/human"
	"github.com/ctguard/ctguard/internal/policy"
)

// Alert is one of ctguard's bans, to push to the LAPI with its evidence.
type Alert struct {
	// Prefix is the banned address (a full-length prefix) or prefix.
	Prefix netip.Prefix
	// TTL is how long the ban runs from At.
	TTL time.Duration
	// At is when the ban was made; zero means when it is pushed.
	At time.Time
	// Reason is the policy's reason (policy.ReasonSource, ...).
	Reason string
	// Score and Threshold are the policy's score and the one it beat;
	// Pressure the pressure level at the time.
	Score, Threshold float64
	Pressure         string
	// The evidence: conntrack entries held, idle and orphaned ones among
	// them, half-open ones, the oldest idle time, the sources of a prefix.
	Entries, Idle, Orphan, HalfOpen, Members int
	OldestIdle                               time.Duration
	// GrowthGain entries gained within GrowthWindow (the growth rules).
	GrowthGain   int
	GrowthWindow time.Duration
	// Message replaces the generated summary when set.
	Message string
}

// FromPolicy makes the Alert of a policy decision banned at at.
func FromPolicy(d policy.Decision, at time.Time) Alert {
	a := Alert{
		Prefix:     d.Target,
		TTL:        d.TTL,
		At:         at,
		Reason:     d.Reason,
		Score:      d.Score,
		Threshold:  d.Threshold,
		Pressure:   d.Pressure.String(),
		Entries:    int(d.Counts.Entries),
		Idle:       int(d.Counts.Idle),
		Orphan:     int(d.Counts.Orphan),
		HalfOpen:   int(d.Counts.HalfOpen),
		Members:    int(d.Members),
		OldestIdle: time.Duration(d.Counts.MaxIdle) * time.Second,
	}
	if g := d.Growth; g != nil {
		a.GrowthGain, a.GrowthWindow = int(g.Gain), g.Window
	}
	return a
}

// scopeOf is the LAPI scope and value of a prefix: Ip and the address for
// a full-length prefix, Range and the CIDR otherwise.
func scopeOf(p netip.Prefix) (scope, value string) {
	if p.IsSingleIP() {
		return ScopeIP, p.Addr().String()
	}
	return ScopeRange, p.String()
}

// The LAPI's Alert model, as a watcher posts it. The keys without
// omitempty are the ones its swagger marks required.
type wireAlert struct {
	Scenario        string         `json:"scenario"`
	ScenarioHash    string         `json:"scenario_hash"`
	ScenarioVersion string         `json:"scenario_version"`
	Message         string         `json:"message"`
	EventsCount     int32          `json:"events_count"`
	StartAt         string         `json:"start_at"`
	StopAt          string         `json:"stop_at"`
	Capacity        int32          `json:"capacity"`
	Leakspeed       string         `json:"leakspeed"`
	Simulated       bool           `json:"simulated"`
	Remediation     bool           `json:"remediation"`
	Events          []wireEvent    `json:"events"`
	Source          wireSource     `json:"source"`
	Decisions       []pushDecision `json:"decisions"`
}

type wireEvent struct {
	Timestamp string     `json:"timestamp"`
	Meta      []wireMeta `json:"meta"`
}

type wireMeta struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

type wireSource struct {
	Scope string `json:"scope"`
	Value string `json:"value"`
	IP    string `json:"ip,omitempty"`
	Range string `json:"range,omitempty"`
}

// pushDecision is the LAPI's Decision model as a watcher posts it (no id:
// the LAPI gives it).
type pushDecision struct {
	Origin   string `json:"origin"`
	Type     string `json:"type"`
	Scope    string `json:"scope"`
	Value    string `json:"value"`
	Duration string `json:"duration"`
	Scenario string `json:"scenario"`
}

// ScenarioVersion is the version of ctguard's scenario in its alerts. With
// an empty scenario_hash (no hub hash), the LAPI counts the scenario as
// "custom" whatever the version.
const ScenarioVersion = "1.0"

// errAlert is an alert that cannot be pushed.
var errAlert = errors.New("alert not pushable")

// wire builds the LAPI alert of a; at replaces a zero a.At.
func (a Alert) wire(scenario string, at time.Time) (wireAlert, error) {
	if !a.Prefix.IsValid() {
		return wireAlert{}, fmt.Errorf("%w: no prefix", errAlert)
	}
	ttl := a.TTL.Round(time.Second)
	if ttl < time.Second {
		return wireAlert{}, fmt.Errorf("%w: %s: ttl %v is under a second", errAlert, a.Prefix, a.TTL)
	}
	if a.At.IsZero() {
		a.At = at
	}
	p := a.Prefix.Masked()
	if a.Prefix.Addr().Is4In6() && a.Prefix.Bits() >= 96 {
		p = netip.PrefixFrom(a.Prefix.Addr().Unmap(), a.Prefix.Bits()-96).Masked()
	}
	scope, value := scopeOf(p)
	stop := a.At.UTC()
	start := stop
	if a.OldestIdle > 0 {
		start = stop.Add(-a.OldestIdle)
	}
	src := wireSource{Scope: scope, Value: value}
	if scope == ScopeIP {
		src.IP = value
	} else {
		src.Range = value
	}
	events := int32(1)
	if a.Entries > 1 {
		events = int32(min(a.Entries, math.MaxInt32))
	}
	msg := a.Message
	if msg == "" {
		msg = a.summary(value, ttl)
	}
	return wireAlert{
		Scenario:        scenario,
		ScenarioHash:    "",
		ScenarioVersion: ScenarioVersion,
		Message:         msg,
		EventsCount:     events,
		StartAt:         start.Format(time.RFC3339),
		StopAt:          stop.Format(time.RFC3339),
		Capacity:        0,
		Leakspeed:       "0",
		Simulated:       false,
		Remediation:     true,
		Events: []wireEvent{{
			Timestamp: stop.Format(time.RFC3339),
			Meta:      a.meta(scope, value, ttl),
		}},
		Source: src,
		Decisions: []pushDecision{{
			Origin:   OriginCrowdSec,
			Type:     TypeBan,
			Scope:    scope,
			Value:    value,
			Duration: ttl.String(),
			Scenario: scenario,
		}},
	}, nil
}

// summary is the alert's message: what was banned, for how long, and why.
func (a Alert) summary(value string, ttl time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "ctguard banned %s for %s: it held %d conntrack entries", value, human.Duration(ttl), a.Entries)
	var parts []string
	if a.Idle > 0 {
		parts = append(parts, fmt.Sprintf("%d idle", a.Idle))
	}
	if a.Orphan > 0 {
		parts = append(parts, fmt.Sprintf("%d orphan", a.Orphan))
	}
	if a.HalfOpen > 0 {
		parts = append(parts, fmt.Sprintf("%d half-open", a.HalfOpen))
	}
	if a.OldestIdle > 0 {
		parts = append(parts, "oldest idle "+human.Duration(a.OldestIdle))
	}
	if len(parts) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	if a.Members > 1 {
		fmt.Fprintf(&b, " from %d sources", a.Members)
	}
	if a.GrowthGain > 0 {
		fmt.Fprintf(&b, ", gained %d within %s", a.GrowthGain, human.Duration(a.GrowthWindow))
	}
	if a.Score > 0 {
		fmt.Fprintf(&b, "; score %.1f", a.Score)
		if a.Threshold > 0 {
			fmt.Fprintf(&b, " >= %.4g", a.Threshold)
		}
		if a.Pressure != "" {
			fmt.Fprintf(&b, " at %s pressure", a.Pressure)
		}
	}
	if a.Reason != "" {
		fmt.Fprintf(&b, " (%s)", a.Reason)
	}
	return b.String()
}

// meta is the evidence as the event's key/value pairs.
func (a Alert) meta(scope, value string, ttl time.Duration) []wireMeta {
	m := []wireMeta{
		{"service", "ctguard"},
		{"log_type", "conntrack"},
	}
	if scope == ScopeIP {
		m = append(m, wireMeta{"source_ip", value})
	} else {
		m = append(m, wireMeta{"source_range", value})
	}
	m = append(m,
		wireMeta{"reason", a.Reason},
		wireMeta{"entries", strconv.Itoa(a.Entries)},
		wireMeta{"idle", strconv.Itoa(a.Idle)},
		wireMeta{"score", strconv.FormatFloat(a.Score, 'f', 1, 64)},
		wireMeta{"ttl", ttl.String()},
	)
	add := func(k string, n int) {
		if n > 0 {
			m = append(m, wireMeta{k, strconv.Itoa(n)})
		}
	}
	add("orphan", a.Orphan)
	add("half_open", a.HalfOpen)
	add("members", a.Members)
	if a.OldestIdle > 0 {
		m = append(m, wireMeta{"oldest_idle", a.OldestIdle.Round(time.Second).String()})
	}
	if a.Threshold > 0 {
		m = append(m, wireMeta{"threshold", strconv.FormatFloat(a.Threshold, 'f', -1, 64)})
	}
	if a.Pressure != "" {
		m = append(m, wireMeta{"pressure", a.Pressure})
	}
	if a.GrowthGain > 0 {
		m = append(m, wireMeta{"growth_gain", strconv.Itoa(a.GrowthGain)}, wireMeta{"growth_window", a.GrowthWindow.String()})
	}
	return m
}
