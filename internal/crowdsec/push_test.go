package crowdsec

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/snapshot"
)

// startClient makes and runs a Client until the test ends.
func startClient(t *testing.T, cfg Config, opts Options) *Client {
	t.Helper()
	if opts.RetryMin == 0 {
		opts.RetryMin, opts.RetryMax = 10*time.Millisecond, 80*time.Millisecond
	}
	c, stop := runClient(t, cfg, opts)
	t.Cleanup(func() { stop() })
	return c
}

func testAlert(p string, ttl time.Duration) Alert {
	return Alert{Prefix: netip.MustParsePrefix(p), TTL: ttl, Reason: policy.ReasonSource, Score: 120, Threshold: 100,
		Pressure: "calm", Entries: 120, Idle: 118, Orphan: 110, OldestIdle: 67 * time.Minute}
}

func (f *fakeLAPI) sentAlerts() []map[string]json.RawMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]map[string]json.RawMessage(nil), f.alerts...)
}

func (f *fakeLAPI) loginCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.logins
}

func (f *fakeLAPI) validationProblems() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.problems...)
}

func field[T any](t *testing.T, m map[string]json.RawMessage, k string) T {
	t.Helper()
	var v T
	raw, ok := m[k]
	if !ok {
		t.Fatalf("no %q in %v", k, m)
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s: %v", k, err)
	}
	return v
}

func TestPushAlertShape(t *testing.T) {
	f := newFakeLAPI(t)
	cfg := f.config(t, true, false)
	c := startClient(t, cfg, Options{UserAgent: "ctguard/test"})

	pd := policy.Decision{
		Target: netip.MustParsePrefix("203.0.113.110/32"), TTL: 4 * time.Hour, Reason: policy.ReasonSource,
		Score: 120, Threshold: 100, Pressure: policy.Pressure(0),
		Counts: snapshot.Counts{Entries: 120, Idle: 120, Orphan: 120, MaxIdle: 4020},
	}
	a := FromPolicy(pd, time.Now())
	c.Push(a)
	r := testAlert("2001:db8:1234::/48", 90*time.Minute)
	r.At = time.Now().Add(-time.Minute)
	r.Members = 7
	c.Push(r)

	eventually(t, 5*time.Second, "two alerts", func() bool { return len(f.sentAlerts()) == 2 && c.Status().Push.Sent == 2 })
	if p := f.validationProblems(); len(p) > 0 {
		t.Fatalf("the fake LAPI refused alerts: %v", p)
	}
	sent := f.sentAlerts()

	// The login.
	f.mu.Lock()
	lb := f.loginBodies[0]
	f.mu.Unlock()
	if got := field[string](t, lb, "machine_id"); got != f.machineID {
		t.Errorf("login machine_id = %q", got)
	}
	if got := field[[]string](t, lb, "scenarios"); len(got) != 1 || got[0] != DefaultScenario {
		t.Errorf("login scenarios = %q", got)
	}

	// An address.
	a0 := sent[0]
	if got := field[string](t, a0, "scenario"); got != DefaultScenario {
		t.Errorf("scenario = %q", got)
	}
	if got := field[*string](t, a0, "scenario_hash"); got == nil || *got != "" {
		t.Errorf("scenario_hash = %v, want present and empty (a custom scenario)", got)
	}
	if got := field[string](t, a0, "scenario_version"); got == "" {
		t.Error("scenario_version empty")
	}
	if got := field[int](t, a0, "events_count"); got != 120 {
		t.Errorf("events_count = %d", got)
	}
	if got := field[bool](t, a0, "simulated"); got {
		t.Error("simulated")
	}
	msg := field[string](t, a0, "message")
	for _, want := range []string{"203.0.113.110", "120 conntrack entries", "120 idle", "oldest idle 1h7m", "score 120.0", "source-score"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	start, _ := time.Parse(time.RFC3339, field[string](t, a0, "start_at"))
	stop, _ := time.Parse(time.RFC3339, field[string](t, a0, "stop_at"))
	if d := stop.Sub(start); d != 4020*time.Second {
		t.Errorf("stop_at - start_at = %v, want the oldest idle time", d)
	}
	src := field[map[string]string](t, a0, "source")
	if src["scope"] != ScopeIP || src["value"] != "203.0.113.110" || src["ip"] != "203.0.113.110" || src["range"] != "" {
		t.Errorf("source = %v", src)
	}
	ds := field[[]map[string]string](t, a0, "decisions")
	if len(ds) != 1 {
		t.Fatalf("decisions = %v", ds)
	}
	want := map[string]string{"origin": "crowdsec", "type": "ban", "scope": "Ip", "value": "203.0.113.110", "duration": "4h0m0s", "scenario": DefaultScenario}
	for k, v := range want {
		if ds[0][k] != v {
			t.Errorf("decision %s = %q, want %q", k, ds[0][k], v)
		}
	}
	events := field[[]struct {
		Timestamp string              `json:"timestamp"`
		Meta      []map[string]string `json:"meta"`
	}](t, a0, "events")
	if len(events) != 1 {
		t.Fatalf("events = %v", events)
	}
	meta := map[string]string{}
	for _, m := range events[0].Meta {
		meta[m["key"]] = m["value"]
	}
	for k, v := range map[string]string{"entries": "120", "idle": "120", "score": "120.0", "reason": "source-score", "orphan": "120", "source_ip": "203.0.113.110", "pressure": "calm"} {
		if meta[k] != v {
			t.Errorf("meta %s = %q, want %q (meta %v)", k, meta[k], v, meta)
		}
	}

	// A v6 range stays a range.
	a1 := sent[1]
	src = field[map[string]string](t, a1, "source")
	if src["scope"] != ScopeRange || src["value"] != "2001:db8:1234::/48" || src["range"] != "2001:db8:1234::/48" || src["ip"] != "" {
		t.Errorf("range source = %v", src)
	}
	ds = field[[]map[string]string](t, a1, "decisions")
	if ds[0]["scope"] != ScopeRange || ds[0]["value"] != "2001:db8:1234::/48" || ds[0]["duration"] != "1h30m0s" {
		t.Errorf("range decision = %v", ds[0])
	}
	if msg := field[string](t, a1, "message"); !strings.Contains(msg, "from 7 sources") {
		t.Errorf("range message %q", msg)
	}

	st := c.Status().Push
	if st.Sent != 2 || st.Queued != 0 || st.Dropped != 0 || st.Logins != 1 || !st.LoggedIn || st.LastSuccess.IsZero() || st.LastError != "" {
		t.Errorf("status = %+v", st)
	}
}

func TestPushRenewsTokenBeforeExpiry(t *testing.T) {
	f := newFakeLAPI(t)
	clock := &fakeClock{t: time.Now()}
	f.now = clock.Now
	c := startClient(t, f.config(t, true, false), Options{Now: clock.Now})

	c.Push(testAlert("192.0.2.1/32", time.Hour))
	eventually(t, 5*time.Second, "first alert", func() bool { return len(f.sentAlerts()) == 1 })
	c.Push(testAlert("192.0.2.2/32", time.Hour))
	eventually(t, 5*time.Second, "second alert", func() bool { return len(f.sentAlerts()) == 2 })
	if n := f.loginCount(); n != 1 {
		t.Fatalf("logins = %d, want 1 while the token is fresh", n)
	}
	// 59m30s later the token has 30s left: renewed before use.
	clock.Add(59*time.Minute + 30*time.Second)
	c.Push(testAlert("192.0.2.3/32", 2*time.Hour))
	eventually(t, 5*time.Second, "third alert", func() bool { return len(f.sentAlerts()) == 3 })
	if n := f.loginCount(); n != 2 {
		t.Fatalf("logins = %d, want 2 (renewed before expiry)", n)
	}
	f.mu.Lock()
	posts := f.alertPosts
	f.mu.Unlock()
	if posts != 3 {
		t.Errorf("alert posts = %d, want 3 (no 401 round trip)", posts)
	}
}

func TestPushLogsInAgainOn401(t *testing.T) {
	f := newFakeLAPI(t)
	c := startClient(t, f.config(t, true, false), Options{})
	c.Push(testAlert("192.0.2.1/32", time.Hour))
	eventually(t, 5*time.Second, "first alert", func() bool { return len(f.sentAlerts()) == 1 })
	f.revokeTokens() // the LAPI restarted with a new secret
	c.Push(testAlert("192.0.2.2/32", time.Hour))
	eventually(t, 5*time.Second, "second alert", func() bool { return len(f.sentAlerts()) == 2 && c.Status().Push.Sent == 2 })
	if n := f.loginCount(); n != 2 {
		t.Errorf("logins = %d, want 2", n)
	}
	st := c.Status().Push
	if st.Sent != 2 || st.Failures != 0 || st.Dropped != 0 {
		t.Errorf("status = %+v", st)
	}
}

func TestPushQueueBoundAndRecovery(t *testing.T) {
	f := newFakeLAPI(t)
	var down = true
	f.alertFail = func(int) (int, time.Duration) {
		f.mu.Lock() // called without f.mu
		defer f.mu.Unlock()
		if down {
			return 500, 0
		}
		return 0, 0
	}
	cfg := f.config(t, true, false)
	cfg.QueueSize = 5
	c := startClient(t, cfg, Options{BatchSize: 2})

	start := time.Now()
	for i := range 20 {
		c.Push(testAlert(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}).String()+"/32", time.Hour))
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("20 pushes took %v with the LAPI down: Push must not wait", d)
	}
	eventually(t, 5*time.Second, "failures", func() bool { return c.Status().Push.Failures >= 3 })
	st := c.Status().Push
	if st.Queued > cfg.QueueSize+2 || st.Dropped < 20-uint64(cfg.QueueSize)-2 || st.Sent != 0 {
		t.Errorf("while down: %+v", st)
	}
	if !strings.Contains(st.LastError, "500") || st.LastErrorAt.IsZero() {
		t.Errorf("last error = %q", st.LastError)
	}

	f.mu.Lock()
	down = false
	f.mu.Unlock()
	c.Push(testAlert("198.51.100.200/32", time.Hour)) // wakes the loop too
	eventually(t, 5*time.Second, "recovery", func() bool {
		s := c.Status().Push
		return s.Queued == 0 && s.Failures == 0 && s.Sent > 0
	})
	st = c.Status().Push
	if st.Sent+st.Dropped != 21 {
		t.Errorf("sent %d + dropped %d != 21 pushed", st.Sent, st.Dropped)
	}
	// The newest alerts survive.
	sent := f.sentAlerts()
	last := field[map[string]string](t, sent[len(sent)-1], "source")["value"]
	if last != "198.51.100.200" {
		t.Errorf("last delivered %s", last)
	}
	got := map[string]bool{}
	for _, a := range sent {
		got[field[map[string]string](t, a, "source")["value"]] = true
	}
	if !got["198.51.100.19"] || got["198.51.100.0"] {
		t.Errorf("delivered %v: want the newest kept and the oldest dropped", got)
	}
	if p := f.validationProblems(); len(p) > 0 {
		t.Error(p)
	}
}

func TestPushRetriesWithBackoff(t *testing.T) {
	f := newFakeLAPI(t)
	var times []time.Time
	f.alertFail = func(n int) (int, time.Duration) {
		f.mu.Lock()
		times = append(times, time.Now())
		f.mu.Unlock()
		if n <= 4 {
			return 503, 0
		}
		return 0, 0
	}
	c := startClient(t, f.config(t, true, false), Options{RetryMin: 20 * time.Millisecond, RetryMax: 160 * time.Millisecond})
	c.Push(testAlert("192.0.2.9/32", time.Hour))
	eventually(t, 5*time.Second, "delivery after 4 failures", func() bool { return c.Status().Push.Sent == 1 })
	f.mu.Lock()
	ts := append([]time.Time(nil), times...)
	f.mu.Unlock()
	if len(ts) != 5 {
		t.Fatalf("%d attempts, want 5", len(ts))
	}
	// Waits: jittered between half and all of 20, 40, 80, 160ms.
	for i, base := range []time.Duration{20, 40, 80, 160} {
		gap := ts[i+1].Sub(ts[i])
		if lo := base * time.Millisecond / 2; gap < lo {
			t.Errorf("retry %d after %v, want >= %v", i+1, gap, lo)
		}
	}
	st := c.Status().Push
	if st.Sent != 1 || st.Failures != 0 || !strings.Contains(st.LastError, "503") || st.LastSuccess.Before(st.LastErrorAt) {
		t.Errorf("status = %+v", st)
	}
}

func TestPushTimeoutOnSlowLAPI(t *testing.T) {
	f := newFakeLAPI(t)
	var slow = true
	f.alertFail = func(int) (int, time.Duration) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if slow {
			return 0, 10 * time.Second
		}
		return 0, 0
	}
	cfg := f.config(t, true, false)
	cfg.Timeout = 150 * time.Millisecond
	c := startClient(t, cfg, Options{})
	start := time.Now()
	c.Push(testAlert("192.0.2.10/32", time.Hour))
	eventually(t, 3*time.Second, "a timeout", func() bool { return c.Status().Push.Failures >= 1 })
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("gave up after %v, want about the 150ms timeout", d)
	}
	if st := c.Status().Push; !strings.Contains(st.LastError, "deadline") && !strings.Contains(st.LastError, "Timeout") {
		t.Errorf("last error = %q", st.LastError)
	}
	f.mu.Lock()
	slow = false
	f.mu.Unlock()
	eventually(t, 5*time.Second, "delivery once fast", func() bool { return c.Status().Push.Sent == 1 })
}

func TestPushRefusedAlertsDoNotBlock(t *testing.T) {
	f := newFakeLAPI(t)
	f.alertFail = func(n int) (int, time.Duration) {
		if n == 1 {
			return 400, 0
		}
		return 0, 0
	}
	c := startClient(t, f.config(t, true, false), Options{})
	c.Push(testAlert("192.0.2.11/32", time.Hour))
	eventually(t, 5*time.Second, "rejection", func() bool { return c.Status().Push.Rejected == 1 })
	c.Push(testAlert("192.0.2.12/32", time.Hour))
	eventually(t, 5*time.Second, "next alert", func() bool { return len(f.sentAlerts()) == 1 })
}

func TestPushSkipsInvalidAndExpired(t *testing.T) {
	f := newFakeLAPI(t)
	down := true
	f.alertFail = func(n int) (int, time.Duration) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if down {
			return 500, 0
		}
		return 0, 0
	}
	c := startClient(t, f.config(t, true, false), Options{RetryMin: 50 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	c.Push(Alert{TTL: time.Hour})                                // no prefix
	c.Push(Alert{Prefix: netip.MustParsePrefix("192.0.2.0/24")}) // no TTL
	c.Push(testAlert("192.0.2.13/32", time.Second))              // ends while the LAPI fails
	c.Push(testAlert("::ffff:192.0.2.0/120", time.Hour))         // mapped: sent as IPv4
	eventually(t, 5*time.Second, "failures", func() bool { return c.Status().Push.Failures > 0 })
	time.Sleep(1100 * time.Millisecond)
	f.mu.Lock()
	down = false
	f.mu.Unlock()
	eventually(t, 5*time.Second, "delivery", func() bool { return c.Status().Push.Sent == 1 })
	st := c.Status().Push
	if st.Invalid != 2 || st.Expired != 1 || st.Sent != 1 {
		t.Errorf("status = %+v", st)
	}
	if v := field[map[string]string](t, f.sentAlerts()[0], "source")["value"]; v != "192.0.2.0/24" {
		t.Errorf("mapped range sent as %q", v)
	}
}

func TestFailingLoginHidesCredentials(t *testing.T) {
	f := newFakeLAPI(t)
	// Wrong credentials, and a LAPI that echoes what it got.
	wrongPassword, wrongKey := "wrong-password-Kx81-echoed", "wrong-key-QQ71-echoed"
	f.loginMessage = "no machine with password " + wrongPassword + " or key " + wrongKey
	cfg := f.config(t, true, true)
	writeFile(t, cfg.PasswordFile, wrongPassword, 0o600)
	writeFile(t, cfg.APIKeyFile, wrongKey, 0o600)
	var logs logBuffer
	c := startClient(t, cfg, Options{Logger: testLogger(&logs), Apply: &recorder{}})
	c.Push(testAlert("192.0.2.14/32", time.Hour))
	eventually(t, 5*time.Second, "failed login and pull", func() bool {
		s := c.Status()
		return s.Push.Failures >= 1 && s.Pull.Failures >= 1
	})
	s := c.Status()
	if !strings.Contains(s.Push.LastError, "401") || !strings.Contains(s.Push.LastError, `login as machine "ctguard-test"`) {
		t.Errorf("push error = %q", s.Push.LastError)
	}
	if !strings.Contains(s.Pull.LastError, "403") {
		t.Errorf("pull error = %q", s.Pull.LastError)
	}
	out, _ := json.Marshal(s)
	for _, secret := range []string{wrongPassword, wrongKey} {
		for name, text := range map[string]string{"status": string(out), "logs": logs.String()} {
			if strings.Contains(text, secret) {
				t.Errorf("%s contain a credential: %s", name, text)
			}
		}
	}
	if !strings.Contains(logs.String(), redacted) {
		t.Errorf("logs do not show the scrubbed message: %s", logs.String())
	}
}

// One alert the LAPI refuses must not cost the others of its batch: the
// batch is sent again one alert at a time.
func TestPushRefusedBatchSentOneByOne(t *testing.T) {
	f := newFakeLAPI(t)
	f.alertFail = func(n int) (int, time.Duration) {
		if n == 1 {
			return 503, 0 // the alerts queue up meanwhile
		}
		return 0, 0
	}
	f.refuse = func(a map[string]json.RawMessage) bool {
		var src map[string]string
		_ = json.Unmarshal(a["source"], &src)
		return src["value"] == "192.0.2.66"
	}
	c := startClient(t, f.config(t, true, false), Options{BatchSize: 10, RetryMin: 200 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	c.Push(testAlert("192.0.2.65/32", time.Hour))
	eventually(t, 5*time.Second, "a failure", func() bool { return c.Status().Push.Failures == 1 })
	c.Push(testAlert("192.0.2.66/32", time.Hour))
	c.Push(testAlert("192.0.2.67/32", time.Hour))
	eventually(t, 5*time.Second, "the batch settled", func() bool {
		s := c.Status().Push
		return s.Sent+s.Rejected == 3
	})
	if st := c.Status().Push; st.Sent != 2 || st.Rejected != 1 || st.Queued != 0 {
		t.Errorf("status %+v: want 2 sent, 1 rejected", st)
	}
	got := map[string]bool{}
	for _, a := range f.sentAlerts() {
		got[field[map[string]string](t, a, "source")["value"]] = true
	}
	if !got["192.0.2.65"] || !got["192.0.2.67"] || got["192.0.2.66"] {
		t.Errorf("delivered %v", got)
	}
}

// runClient runs a Client and returns a stop that cancels it and reports
// how long Run took to return.
func runClient(t *testing.T, cfg Config, opts Options) (*Client, func() time.Duration) {
	t.Helper()
	c, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	stop := func() time.Duration {
		start := time.Now()
		cancel()
		select {
		case <-done:
		case <-time.After(FlushTimeout + 5*time.Second):
			t.Error("Run did not return after its context ended")
		}
		return time.Since(start)
	}
	t.Cleanup(cancel)
	return c, stop
}

// A stopping daemon sends the alerts still queued (waiting out a retry)
// before the link ends: they live in memory only.
func TestPushFlushesAtStop(t *testing.T) {
	f := newFakeLAPI(t)
	f.alertFail = func(n int) (int, time.Duration) {
		if n == 1 {
			return 503, 0
		}
		return 0, 0
	}
	c, stop := runClient(t, f.config(t, true, false), Options{RetryMin: time.Minute, RetryMax: time.Minute})
	c.Push(testAlert("192.0.2.70/32", time.Hour))
	eventually(t, 5*time.Second, "a failure", func() bool { return c.Status().Push.Failures == 1 })
	c.Push(testAlert("192.0.2.71/32", time.Hour))
	if took := stop(); took > FlushTimeout {
		t.Errorf("stopping took %v", took)
	}
	if n := len(f.sentAlerts()); n != 2 {
		t.Errorf("%d alerts reached the LAPI at stop, want 2", n)
	}
	if st := c.Status().Push; st.Sent != 2 || st.Queued != 0 {
		t.Errorf("status %+v", st)
	}
}

// With the LAPI down at stop, the flush gives up within FlushTimeout and
// counts what it lost.
func TestPushFlushGivesUp(t *testing.T) {
	f := newFakeLAPI(t)
	f.alertFail = func(int) (int, time.Duration) { return 0, time.Minute } // hangs
	cfg := f.config(t, true, false)
	cfg.Timeout = time.Minute
	c, stop := runClient(t, cfg, Options{})
	c.Push(testAlert("192.0.2.72/32", time.Hour))
	eventually(t, 5*time.Second, "the post in flight", func() bool { return c.Status().Push.Queued == 1 })
	took := stop()
	if took < FlushTimeout-time.Second || took > FlushTimeout+2*time.Second {
		t.Errorf("stopping took %v, want about FlushTimeout (%v)", took, FlushTimeout)
	}
	if st := c.Status().Push; st.Dropped != 1 || st.Sent != 0 || st.Queued != 0 {
		t.Errorf("status %+v: want the alert counted as dropped", st)
	}
}
