package crowdsec

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"
)

// newPullClient makes a pull-only Client on the fake, without running it:
// the tests drive pullOnce.
func newPullClient(t *testing.T, f *fakeLAPI, edit func(*Config)) (*Client, *recorder, *logBuffer) {
	t.Helper()
	cfg := f.config(t, false, true)
	if edit != nil {
		edit(&cfg)
	}
	rec, logs := &recorder{}, &logBuffer{}
	c, err := New(cfg, Options{Apply: rec, Logger: testLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	return c, rec, logs
}

func prefixes(ds []Decision) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Prefix.String()
	}
	return out
}

func eq(a []string, b ...string) bool {
	return strings.Join(a, " ") == strings.Join(b, " ")
}

func mustPull(t *testing.T, c *Client, startup bool) {
	t.Helper()
	if err := c.pull.pullOnce(context.Background(), startup); err != nil {
		t.Fatal(err)
	}
}

func TestPullStartupDeltasDeletions(t *testing.T) {
	f := newFakeLAPI(t)
	f.addDecision("crowdsec", "ban", "Ip", "192.0.2.7", "crowdsecurity/ssh-bf", 4*time.Hour)
	r4 := f.addDecision("cscli", "ban", "Range", "198.51.100.0/24", "manual 'ban' from 'admin'", 2*time.Hour)
	f.addDecision("CAPI", "ban", "Ip", "2001:db8::7", "crowdsecurity/http-probing", 3*time.Hour)
	f.addDecision("lists", "ban", "Range", "2a06:4880::/32", "lists:spamhaus", 24*time.Hour)
	f.addDecision("crowdsec", "captcha", "Ip", "192.0.2.8", "crowdsecurity/http-bad-user-agent", time.Hour)
	f.addDecision("cscli", "ban", "Country", "XX", "manual", time.Hour)
	f.addDecision("crowdsec", "ban", "Ip", "192.0.2.9", DefaultScenario, time.Hour) // pushed by this host
	c, rec, _ := newPullClient(t, f, nil)

	mustPull(t, c, true)
	calls := rec.all()
	if len(calls) != 1 {
		t.Fatalf("%d Apply calls", len(calls))
	}
	if got := prefixes(calls[0][0]); !eq(got, "192.0.2.7/32", "198.51.100.0/24", "2001:db8::7/128", "2a06:4880::/32") {
		t.Errorf("startup new = %v", got)
	}
	for _, d := range calls[0][0] {
		if d.Type != TypeBan || d.Remaining < time.Hour || d.Remaining > 24*time.Hour || d.ID == 0 {
			t.Errorf("decision %+v", d)
		}
		if d.Prefix.String() == "198.51.100.0/24" && (d.Scope != ScopeRange || d.Origin != "cscli" || d.Remaining > 2*time.Hour || d.Remaining < 2*time.Hour-5*time.Second) {
			t.Errorf("range decision %+v", d)
		}
	}
	if len(calls[0][1]) != 0 {
		t.Errorf("startup deleted = %v", prefixes(calls[0][1]))
	}
	js, err := json.Marshal(calls[0][0][0])
	if err != nil || !strings.Contains(string(js), `"prefix":"192.0.2.7/32"`) || !strings.Contains(string(js), `"remaining_seconds":14`) || strings.Contains(string(js), `"Remaining"`) {
		t.Errorf("json %s, %v", js, err)
	}
	q, _ := url.ParseQuery(f.calls()[0])
	if q.Get("startup") != "true" || q.Get("scopes") != "ip,range" || q.Get("dedup") != "false" || q.Has("origins") {
		t.Errorf("startup query %v", q)
	}
	st := c.Status().Pull
	if st.Skipped.NotBan != 1 || st.Skipped.Scope != 0 || st.Skipped.Own != 1 || st.Held != 4 || st.Prefixes != 4 || st.Pulls != 1 || st.LastStartup.IsZero() {
		// Country is filtered by the server (scopes=ip,range).
		t.Errorf("status %+v", st)
	}

	// Nothing new: no call.
	mustPull(t, c, false)
	if n := len(rec.all()); n != 1 {
		t.Errorf("an empty delta called Apply (%d calls)", n)
	}
	if q, _ := url.ParseQuery(f.calls()[1]); q.Get("startup") != "false" {
		t.Errorf("delta query %v", q)
	}

	// A new decision and a deletion.
	f.addDecision("crowdsec", "ban", "Ip", "192.0.2.50", "crowdsecurity/ssh-slow-bf", time.Hour)
	f.expire(r4)
	mustPull(t, c, false)
	calls = rec.all()
	if len(calls) != 2 || !eq(prefixes(calls[1][0]), "192.0.2.50/32") || !eq(prefixes(calls[1][1]), "198.51.100.0/24") {
		t.Fatalf("delta = %v", calls[1:])
	}
	if held := prefixes(c.Held()); !eq(held, "192.0.2.7/32", "192.0.2.50/32", "2001:db8::7/128", "2a06:4880::/32") {
		t.Errorf("held = %v", held)
	}
}

func TestPullSamePrefixTwice(t *testing.T) {
	f := newFakeLAPI(t)
	long := f.addDecision("crowdsec", "ban", "Ip", "192.0.2.1", "crowdsecurity/ssh-bf", 4*time.Hour)
	c, rec, _ := newPullClient(t, f, nil)
	mustPull(t, c, true)
	short := f.addDecision("CAPI", "ban", "Ip", "192.0.2.1", "crowdsecurity/ssh-bf", time.Hour)
	mustPull(t, c, false)
	if n := len(rec.all()); n != 1 {
		t.Errorf("a shorter decision on a banned prefix called Apply: %v", rec.all())
	}
	// The long one goes: the short one still bans the address, for its time.
	f.expire(long)
	mustPull(t, c, false)
	calls := rec.all()
	if len(calls) != 2 || !eq(prefixes(calls[1][0]), "192.0.2.1/32") || len(calls[1][1]) != 0 || calls[1][0][0].ID != short || calls[1][0][0].Remaining > time.Hour {
		t.Fatalf("after the long one went: %+v", calls)
	}
	f.expire(short)
	mustPull(t, c, false)
	calls = rec.all()
	if len(calls) != 3 || len(calls[2][0]) != 0 || !eq(prefixes(calls[2][1]), "192.0.2.1/32") {
		t.Fatalf("after both went: %+v", calls)
	}
	if st := c.Status().Pull; st.Held != 0 || st.Prefixes != 0 {
		t.Errorf("status %+v", st)
	}
}

func TestParseValueKeepsRanges(t *testing.T) {
	for _, tc := range []struct {
		scope, value, want string
		masked             bool
	}{
		{ScopeIP, "192.0.2.1", "192.0.2.1/32", false},
		{ScopeIP, "2001:db8::1", "2001:db8::1/128", false},
		{ScopeIP, "::ffff:192.0.2.1", "192.0.2.1/32", false},
		{ScopeIP, "192.0.2.1/32", "192.0.2.1/32", false},
		{ScopeIP, "192.0.2.0/24", "", false},
		{ScopeIP, "fe80::1%eth0", "", false},
		{ScopeIP, "not an address", "", false},
		{ScopeRange, "159.138.96.0/20", "159.138.96.0/20", false}, // cs-firewall-bouncer#396 made this one address
		{ScopeRange, "2a06:4880::/32", "2a06:4880::/32", false},   // cs-firewall-bouncer#412 likewise
		{ScopeRange, "10.1.2.3/8", "10.0.0.0/8", true},
		{ScopeRange, "2001:db8::1/64", "2001:db8::/64", true},
		{ScopeRange, "::ffff:192.0.2.0/120", "192.0.2.0/24", false},
		{ScopeRange, "::ffff:0.0.0.0/95", "", false},
		{ScopeRange, "192.0.2.7", "192.0.2.7/32", false},
		{ScopeRange, "192.0.2.0/33", "", false},
		{ScopeRange, "", "", false},
	} {
		p, masked, err := parseValue(tc.scope, tc.value)
		got := ""
		if err == nil {
			got = p.String()
		}
		if got != tc.want || masked != tc.masked {
			t.Errorf("%s %q = %q masked %v (err %v), want %q masked %v", tc.scope, tc.value, got, masked, err, tc.want, tc.masked)
		}
	}
}

func TestPullRangesV4V6AndLimits(t *testing.T) {
	f := newFakeLAPI(t)
	f.addDecision("cscli", "ban", "Range", "159.138.96.0/20", "spam", 5000*time.Hour)
	f.addDecision("cscli", "ban", "Range", "2a06:4880::/32", "manual ban", 90*24*time.Hour)
	f.addDecision("cscli", "ban", "Range", "10.1.2.3/24", "sloppy", time.Hour)    // host bits: masked
	f.addDecision("CAPI", "ban", "Range", "10.0.0.0/8", "too broad", time.Hour)   // /8 < /16
	f.addDecision("CAPI", "ban", "Range", "2a00::/24", "too broad v6", time.Hour) // /24 < /32
	f.addDecision("cscli", "ban", "range", "2001:db8:5::/48", "lower-case scope", time.Hour)
	c, rec, logs := newPullClient(t, f, nil)
	mustPull(t, c, true)
	got := prefixes(rec.all()[0][0])
	if !eq(got, "10.1.2.0/24", "159.138.96.0/20", "2001:db8:5::/48", "2a06:4880::/32") {
		t.Errorf("applied %v", got)
	}
	for _, d := range rec.all()[0][0] {
		if d.Scope != ScopeRange || d.Prefix != d.Prefix.Masked() {
			t.Errorf("%+v", d)
		}
	}
	st := c.Status().Pull
	if st.Skipped.TooBroad != 2 || st.Masked != 1 {
		t.Errorf("status %+v", st)
	}
	for _, want := range []string{"10.0.0.0/8 is broader than /16 (min_prefix_v4)", "2a00::/24 is broader than /32 (min_prefix_v6)", "range 10.1.2.3/24 has host bits set: applied as 10.1.2.0/24"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}
}

func TestPullMaxDecisions(t *testing.T) {
	f := newFakeLAPI(t)
	for i := range 5 {
		f.addDecision("CAPI", "ban", "Ip", fmt.Sprintf("192.0.2.%d", i+1), "crowdsecurity/ssh-bf", time.Hour)
	}
	c, rec, logs := newPullClient(t, f, func(c *Config) { c.MaxDecisions = 3 })
	mustPull(t, c, true)
	if got := prefixes(rec.all()[0][0]); len(got) != 3 {
		t.Errorf("applied %v, want 3", got)
	}
	f.addDecision("CAPI", "ban", "Ip", "192.0.2.100", "crowdsecurity/ssh-bf", time.Hour)
	mustPull(t, c, false)
	st := c.Status().Pull
	if st.Held != 3 || st.Dropped != 3 {
		t.Errorf("status %+v", st)
	}
	if !strings.Contains(logs.String(), "dropped_over_max_decisions=2") {
		t.Errorf("logs: %s", logs.String())
	}
}

func TestPullFilters(t *testing.T) {
	f := newFakeLAPI(t)
	f.addDecision("crowdsec", "ban", "Ip", "192.0.2.1", "crowdsecurity/ssh-bf", time.Hour)
	f.addDecision("crowdsec", "ban", "Ip", "192.0.2.2", "crowdsecurity/http-crawl-non_statics", time.Hour)
	f.addDecision("CAPI", "ban", "Ip", "192.0.2.3", "crowdsecurity/ssh-slow-bf", time.Hour)
	f.addDecision("cscli", "ban", "Ip", "192.0.2.4", "manual 'ban' from 'admin'", time.Hour)
	f.addDecision("lists", "ban", "Ip", "192.0.2.5", "lists:firehol", time.Hour)
	f.addDecision("crowdsec", "ban", "Ip", "192.0.2.6", "someone/SSH-thing", time.Hour)
	f.addDecision("crowdsec", "ban", "Ip", "192.0.2.7", "ctguard/conntrack-holder", time.Hour)

	// Only crowdsec and CAPI origins (the fake filters them like the
	// LAPI, and the client again); scenarios: crowdsecurity/* or *ssh*,
	// without http ones.
	c, rec, _ := newPullClient(t, f, func(c *Config) {
		c.Origins = []string{"crowdsec", "CAPI"}
		c.Scenarios = []string{"crowdsecurity/*", "*ssh*"}
		c.ExcludeScenarios = []string{"*http*"}
	})
	mustPull(t, c, true)
	if got := prefixes(rec.all()[0][0]); !eq(got, "192.0.2.1/32", "192.0.2.3/32", "192.0.2.6/32") {
		t.Errorf("applied %v", got)
	}
	if q, _ := url.ParseQuery(f.calls()[0]); q.Get("origins") != "crowdsec,CAPI" {
		t.Errorf("query %v", q)
	}
	st := c.Status().Pull
	if st.Skipped.Scenario != 1 || st.Skipped.Own != 1 {
		t.Errorf("status %+v", st.Skipped)
	}

	// The client filters origins itself too (a LAPI that ignores the
	// parameter).
	fl := &filter{origins: map[string]bool{"capi": true}}
	if _, why, _, _ := fl.translate(wireDecision{Type: "ban", Scope: "Ip", Value: "192.0.2.1", Duration: "1h", Origin: "cscli"}); why != skipOrigin {
		t.Errorf("origin filter: %v", why)
	}
	if _, why, _, _ := fl.translate(wireDecision{Type: "ban", Scope: "Ip", Value: "192.0.2.1", Duration: "1h", Origin: "CAPI"}); why != keep {
		t.Errorf("origin filter (case): %v", why)
	}
}

func TestGlob(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		want bool
	}{
		{"crowdsecurity/*", "crowdsecurity/ssh-bf", true},
		{"crowdsecurity/*", "crowdsecurity/", true},
		{"crowdsecurity/*", "other/ssh-bf", false},
		{"*ssh*", "crowdsecurity/ssh-bf", true},
		{"*SSH*", "crowdsecurity/ssh-bf", true},
		{"ctguard/*", "CTGuard/conntrack-holder", true},
		{"ssh", "crowdsecurity/ssh-bf", false},
		{"crowdsecurity/ssh-?f", "crowdsecurity/ssh-bf", true},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "axxbyy", false},
		{"*", "", true},
		{"", "", true},
		{"", "x", false},
	} {
		if got := glob(tc.p, tc.s); got != tc.want {
			t.Errorf("glob(%q, %q) = %v", tc.p, tc.s, got)
		}
	}
}

func TestOwnPredicate(t *testing.T) {
	cfg := Default()
	if !cfg.Own(DefaultScenario) || !cfg.Own("ctguard/anything") || cfg.Own("crowdsecurity/ssh-bf") || cfg.Own("ctguardian/x") {
		t.Error("own_scenarios default")
	}
	f := newFakeLAPI(t)
	c, _, _ := newPullClient(t, f, nil)
	if !c.Own(Decision{Scenario: DefaultScenario}) || c.Own(Decision{Scenario: "crowdsecurity/ssh-bf"}) {
		t.Error("Client.Own")
	}
}

func TestPullGarbageAndRecovery(t *testing.T) {
	f := newFakeLAPI(t)
	f.addDecision("crowdsec", "ban", "Ip", "192.0.2.1", "crowdsecurity/ssh-bf", time.Hour)
	bodies := []string{
		`not json at all`,
		`{"new": [`,
		`{"new": 5}`,
		`[]`,
		`{"new": [], "deleted": []} trailing`,
		`{"new": [{"id": 1, "scope": "Ip", "value": "192.0.2.1", "type": "ban", "duration": "1h", "origin": "x", "scenario": "y"}`,
		"",
	}
	i := 0
	f.stream = func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		body := bodies[i]
		f.mu.Unlock()
		w.WriteHeader(200)
		_, _ = w.Write([]byte(body))
	}
	c, rec, _ := newPullClient(t, f, nil)
	for n, body := range bodies {
		f.mu.Lock()
		i = n
		f.mu.Unlock()
		err := c.pull.pullOnce(context.Background(), true)
		if err == nil || !strings.Contains(err.Error(), "not a decisions stream object") {
			t.Errorf("body %q: err %v", body, err)
		}
	}
	if n := len(rec.all()); n != 0 {
		t.Errorf("garbage reached Apply %d times", n)
	}

	// Elements of the wrong shape and values that do not parse are
	// counted; the rest applies.
	f.mu.Lock()
	f.stream = func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"new": [
			{"id": "seven", "scope": "Ip", "value": "192.0.2.7", "type": "ban", "duration": "1h", "origin": "crowdsec", "scenario": "s"},
			[1, 2],
			null,
			{"id": 8, "scope": "Ip", "value": "192.0.2.999", "type": "ban", "duration": "1h", "origin": "crowdsec", "scenario": "s"},
			{"id": 9, "scope": "Ip", "value": "192.0.2.9", "type": "ban", "duration": "soon", "origin": "crowdsec", "scenario": "s"},
			{"id": 10, "scope": "Ip", "value": "192.0.2.10", "type": "ban", "duration": "-1s", "origin": "crowdsec", "scenario": "s"},
			{"id": 11, "scope": "Ip", "value": "192.0.2.11", "type": "ban", "duration": "3h59m58.2s", "origin": "crowdsec", "scenario": "s", "extra": {"x": [1]}},
			{"id": 12, "scope": "Ip", "value": "192.0.2.12", "type": "ban", "duration": "1d2h", "origin": "crowdsec", "scenario": "s"}
		], "deleted": null, "other": {"ignored": true}}`))
	}
	f.mu.Unlock()
	mustPull(t, c, true)
	calls := rec.all()
	if len(calls) != 1 || !eq(prefixes(calls[0][0]), "192.0.2.11/32", "192.0.2.12/32") {
		t.Fatalf("calls %v", calls)
	}
	if d := calls[0][0][0].Remaining; d != 3*time.Hour+59*time.Minute+58200*time.Millisecond {
		t.Errorf("remaining %v", d)
	}
	if d := calls[0][0][1].Remaining; d != 26*time.Hour {
		t.Errorf("remaining %v", d)
	}
	st := c.Status().Pull
	if st.Skipped.Invalid != 5 || st.Skipped.Expired != 1 || st.Received != 8 || st.Failures != 0 {
		t.Errorf("status %+v", st)
	}
}

func TestPullOversizedBody(t *testing.T) {
	f := newFakeLAPI(t)
	f.stream = func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"new": [`))
		one := `{"id": 1, "scope": "Ip", "value": "192.0.2.1", "type": "ban", "duration": "1h", "origin": "crowdsec", "scenario": "s"},`
		for range (1 << 20) / len(one) {
			if _, err := w.Write([]byte(one)); err != nil {
				return
			}
		}
		_, _ = w.Write([]byte(`{"id": 2, "scope": "Ip", "value": "192.0.2.2", "type": "ban", "duration": "1h", "origin": "crowdsec", "scenario": "s"}], "deleted": []}`))
	}
	c, rec, _ := newPullClient(t, f, func(c *Config) { c.MaxBodyBytes = 64 << 10 })
	err := c.pull.pullOnce(context.Background(), true)
	if err == nil || !strings.Contains(err.Error(), "max_body_bytes") {
		t.Fatalf("err %v", err)
	}
	if len(rec.all()) != 0 {
		t.Error("a cut body reached Apply")
	}
}

func TestPullSlowLAPIKeepsRunning(t *testing.T) {
	f := newFakeLAPI(t)
	f.addDecision("crowdsec", "ban", "Ip", "192.0.2.1", "crowdsecurity/ssh-bf", time.Hour)
	slow := true
	f.stream = func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		s := slow
		f.mu.Unlock()
		if !s {
			f.mu.Lock()
			f.stream = nil
			f.mu.Unlock()
			f.streamHandler(w, r)
			return
		}
		// Headers, then a body that drips.
		w.WriteHeader(200)
		_, _ = w.Write([]byte(`{"new": [`))
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-f.done:
		case <-time.After(10 * time.Second):
		}
	}
	cfg := f.config(t, false, true)
	cfg.PullTimeout = 200 * time.Millisecond
	cfg.PullInterval = time.Second
	rec := &recorder{}
	c := startClient(t, cfg, Options{Apply: rec, RetryMin: time.Second, RetryMax: time.Second})
	start := time.Now()
	eventually(t, 3*time.Second, "a timed out pull", func() bool { return c.Status().Pull.Failures >= 1 })
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("gave up after %v, want about the 200ms timeout", d)
	}
	if e := c.Status().Pull.LastError; !strings.Contains(e, "deadline") && !strings.Contains(e, "canceled") {
		t.Errorf("last error %q", e)
	}
	f.mu.Lock()
	slow = false
	f.mu.Unlock()
	eventually(t, 5*time.Second, "recovery", func() bool { return len(rec.all()) == 1 })
	if st := c.Status().Pull; st.Failures != 0 || st.Pulls < 1 || st.LastError == "" {
		t.Errorf("status %+v", st)
	}
}

func TestPullResyncAfterFailure(t *testing.T) {
	f := newFakeLAPI(t)
	stale := f.addDecision("crowdsec", "ban", "Ip", "192.0.2.66", "crowdsecurity/ssh-bf", time.Hour)
	f.expire(stale) // expired before ctguard started: a ban an earlier run may hold
	a := f.addDecision("crowdsec", "ban", "Ip", "192.0.2.1", "crowdsecurity/ssh-bf", time.Hour)
	f.addDecision("crowdsec", "ban", "Ip", "192.0.2.2", "crowdsecurity/ssh-bf", time.Hour)
	f.nullEmpty = true
	c, rec, _ := newPullClient(t, f, nil)
	mustPull(t, c, true)
	calls := rec.all()
	if !eq(prefixes(calls[0][0]), "192.0.2.1/32", "192.0.2.2/32") || !eq(prefixes(calls[0][1]), "192.0.2.66/32") {
		t.Fatalf("first startup %v", calls)
	}

	// An outage: the LAPI drops a decision meanwhile, the LAPI counts the
	// failed pull as done. The loop resyncs with startup=true.
	f.expire(a)
	f.mu.Lock()
	f.lastPull = time.Now().Add(time.Hour) // the delta would miss the expiry
	f.mu.Unlock()
	mustPull(t, c, true)
	calls = rec.all()
	if len(calls) != 2 || len(calls[1][0]) != 0 || !eq(prefixes(calls[1][1]), "192.0.2.1/32") {
		t.Fatalf("resync %v", calls)
	}
}

func TestPullLoopStartsThenDeltas(t *testing.T) {
	f := newFakeLAPI(t)
	f.addDecision("crowdsec", "ban", "Ip", "192.0.2.1", "crowdsecurity/ssh-bf", time.Hour)
	cfg := f.config(t, true, true)
	cfg.PullInterval = time.Second
	rec := &recorder{}
	c := startClient(t, cfg, Options{Apply: rec})
	// This host's alert comes back from the LAPI as a decision: skipped.
	c.Push(testAlert("203.0.113.9/32", time.Hour))
	eventually(t, 5*time.Second, "two pulls", func() bool { return len(f.calls()) >= 2 })
	calls := f.calls()
	if q, _ := url.ParseQuery(calls[0]); q.Get("startup") != "true" {
		t.Errorf("first %v", q)
	}
	if q, _ := url.ParseQuery(calls[1]); q.Get("startup") != "false" {
		t.Errorf("second %v", q)
	}
	eventually(t, 5*time.Second, "the own decision skipped", func() bool { return c.Status().Pull.Skipped.Own == 1 })
	for _, call := range rec.all() {
		for _, d := range call[0] {
			if d.Prefix == netip.MustParsePrefix("203.0.113.9/32") {
				t.Errorf("own decision applied: %+v", d)
			}
		}
	}
}
