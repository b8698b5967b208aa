package crowdsec

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeLAPI is a LAPI on loopback: it logs machines in (JWT-like tokens
// with an expiry), validates posted alerts against the fields the LAPI's
// swagger requires, turns their decisions into stream decisions, and
// serves /v1/decisions/stream per bouncer with startup and deltas.
type fakeLAPI struct {
	t         testing.TB
	srv       *httptest.Server
	startOnce sync.Once
	done      chan struct{} // closed when the test ends, before the server closes

	mu        sync.Mutex
	machineID string
	password  string
	apiKey    string
	tokenLife time.Duration
	now       func() time.Time // the clock of token expiry

	tokens      map[string]time.Time
	logins      int
	loginBodies []map[string]json.RawMessage
	alerts      []map[string]json.RawMessage // the valid ones
	alertPosts  int
	problems    []string // validation failures of posted alerts

	// alertFail, when set, answers an alerts post (before validation).
	alertFail func(n int) (status int, delay time.Duration)
	// refuse, when set, makes the whole post a 422 when it says so of any
	// alert in it (a LAPI that will never take that alert).
	refuse func(alert map[string]json.RawMessage) bool
	// loginMessage replaces the message of a failed login.
	loginMessage string

	decisions   []*fakeDecision
	nextID      int64
	lastPull    time.Time
	streamCalls []string // raw queries
	nullEmpty   bool     // empty arrays as null, like LAPI 1.4
	// stream, when set, answers the stream request instead of the model.
	stream func(w http.ResponseWriter, r *http.Request)
}

type fakeDecision struct {
	ID        int64
	Origin    string
	Type      string
	Scope     string
	Value     string
	Scenario  string
	Until     time.Time
	Created   time.Time
	ExpiredAt time.Time // set when expired early
}

func newFakeLAPI(t testing.TB) *fakeLAPI {
	f := &fakeLAPI{
		t:         t,
		machineID: "ctguard-test",
		password:  "s3cret-machine-password-Zq9",
		apiKey:    "bouncer-key-0123456789abcdefXYZ",
		tokenLife: time.Hour,
		now:       time.Now,
		tokens:    map[string]time.Time{},
		nextID:    100,
		done:      make(chan struct{}),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/watchers/login", f.login)
	mux.HandleFunc("POST /v1/alerts", f.postAlerts)
	mux.HandleFunc("GET /v1/decisions/stream", f.streamHandler)
	// Started by config, after the test has set the fake up: what the
	// test sets later, it sets under f.mu.
	f.srv = httptest.NewUnstartedServer(mux)
	t.Cleanup(f.srv.Close)
	t.Cleanup(func() { close(f.done) }) // runs first: handlers that wait return
	return f
}

// url starts the server (once) and gives its URL.
func (f *fakeLAPI) url() string {
	f.startOnce.Do(f.srv.Start)
	return f.srv.URL
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeLAPI) login(w http.ResponseWriter, r *http.Request) {
	var body map[string]json.RawMessage
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		writeJSON(w, 400, map[string]any{"message": err.Error()})
		return
	}
	var id, pw string
	_ = json.Unmarshal(body["machine_id"], &id)
	_ = json.Unmarshal(body["password"], &pw)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loginBodies = append(f.loginBodies, body)
	if id != f.machineID || pw != f.password {
		msg := "incorrect Username or Password"
		if f.loginMessage != "" {
			msg = f.loginMessage
		}
		writeJSON(w, 401, map[string]any{"code": 401, "message": msg})
		return
	}
	f.logins++
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	tok := "tok-" + hex.EncodeToString(b)
	exp := f.now().Add(f.tokenLife)
	f.tokens[tok] = exp
	writeJSON(w, 200, map[string]any{"code": 200, "expire": exp.UTC().Format(time.RFC3339), "token": tok})
}

func (f *fakeLAPI) revokeTokens() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens = map[string]time.Time{}
}

func (f *fakeLAPI) postAlerts(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.alertPosts++
	n := f.alertPosts
	fail := f.alertFail
	f.mu.Unlock()
	if fail != nil {
		if code, delay := fail(n); code != 0 || delay > 0 {
			if delay > 0 {
				select {
				case <-time.After(delay):
				case <-r.Context().Done():
					return
				case <-f.done:
					return
				}
			}
			if code != 0 {
				writeJSON(w, code, map[string]any{"message": "fake failure"})
				return
			}
		}
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	f.mu.Lock()
	exp, known := f.tokens[tok]
	valid := ok && known && f.now().Before(exp)
	f.mu.Unlock()
	if !valid {
		writeJSON(w, 401, map[string]any{"code": 401, "message": "Token is expired"})
		return
	}
	var alerts []map[string]json.RawMessage
	if err := json.NewDecoder(r.Body).Decode(&alerts); err != nil {
		writeJSON(w, 400, map[string]any{"message": err.Error()})
		return
	}
	var ids []string
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, a := range alerts {
		if f.refuse != nil && f.refuse(a) {
			writeJSON(w, 422, map[string]any{"message": fmt.Sprintf("alert %d refused", i)})
			return
		}
		if err := validateAlert(a); err != nil {
			f.problems = append(f.problems, fmt.Sprintf("alert %d: %v", i, err))
			writeJSON(w, 400, map[string]any{"message": err.Error()})
			return
		}
	}
	for _, a := range alerts {
		f.alerts = append(f.alerts, a)
		var stop string
		_ = json.Unmarshal(a["stop_at"], &stop)
		stopAt, _ := time.Parse(time.RFC3339, stop)
		var ds []map[string]string
		_ = json.Unmarshal(a["decisions"], &ds)
		for _, d := range ds {
			dur, _ := time.ParseDuration(d["duration"])
			f.nextID++
			f.decisions = append(f.decisions, &fakeDecision{
				ID: f.nextID, Origin: d["origin"], Type: d["type"], Scope: d["scope"], Value: d["value"],
				Scenario: d["scenario"], Until: stopAt.Add(dur), Created: time.Now(),
			})
		}
		ids = append(ids, fmt.Sprint(len(f.alerts)))
	}
	writeJSON(w, 201, ids)
}

// validateAlert checks an alert as the LAPI's models do: every required
// key present, not null, of its type; then what the LAPI parses later
// (RFC 3339 times, Go durations, addresses and ranges).
func validateAlert(a map[string]json.RawMessage) error {
	var errs []error
	str := func(m map[string]json.RawMessage, k string) string {
		raw, ok := m[k]
		var s *string
		if !ok || json.Unmarshal(raw, &s) != nil || s == nil {
			errs = append(errs, fmt.Errorf("%s: required string", k))
			return ""
		}
		return *s
	}
	i32 := func(k string) {
		raw, ok := a[k]
		var n *float64
		if !ok || json.Unmarshal(raw, &n) != nil || n == nil || *n != math.Trunc(*n) || *n < math.MinInt32 || *n > math.MaxInt32 {
			errs = append(errs, fmt.Errorf("%s: required int32", k))
		}
	}
	rfc := func(k, v string) {
		if _, err := time.Parse(time.RFC3339, v); err != nil {
			errs = append(errs, fmt.Errorf("%s = %q: not RFC 3339", k, v))
		}
	}
	for _, k := range []string{"scenario", "scenario_hash", "scenario_version", "message", "leakspeed"} {
		str(a, k)
	}
	i32("events_count")
	i32("capacity")
	rfc("start_at", str(a, "start_at"))
	rfc("stop_at", str(a, "stop_at"))
	var sim *bool
	if json.Unmarshal(a["simulated"], &sim) != nil || sim == nil {
		errs = append(errs, errors.New("simulated: required boolean"))
	}
	var events []map[string]json.RawMessage
	if raw, ok := a["events"]; !ok || json.Unmarshal(raw, &events) != nil || events == nil {
		errs = append(errs, errors.New("events: required array"))
	}
	for _, e := range events {
		rfc("events.timestamp", str(e, "timestamp"))
		var meta []map[string]*string
		if raw, ok := e["meta"]; !ok || json.Unmarshal(raw, &meta) != nil || meta == nil {
			errs = append(errs, errors.New("events.meta: required array"))
		}
		for _, m := range meta {
			if m["key"] == nil || m["value"] == nil {
				errs = append(errs, errors.New("events.meta: key and value"))
			}
		}
	}
	var src map[string]json.RawMessage
	if raw, ok := a["source"]; !ok || json.Unmarshal(raw, &src) != nil || src == nil {
		errs = append(errs, errors.New("source: required object"))
	} else {
		str(src, "scope")
		str(src, "value")
	}
	var ds []map[string]json.RawMessage
	if raw, ok := a["decisions"]; ok {
		if json.Unmarshal(raw, &ds) != nil {
			errs = append(errs, errors.New("decisions: not an array"))
		}
	}
	for _, d := range ds {
		for _, k := range []string{"origin", "type", "scope", "scenario"} {
			str(d, k)
		}
		if dur, err := time.ParseDuration(str(d, "duration")); err != nil || dur <= 0 { // LAPI 1.4 takes Go durations only
			errs = append(errs, fmt.Errorf("decisions.duration: %v", err))
		}
		scope, value := str(d, "scope"), str(d, "value")
		switch strings.ToLower(scope) {
		case "ip":
			if _, err := netip.ParseAddr(value); err != nil {
				errs = append(errs, fmt.Errorf("decisions.value %q: %v", value, err))
			}
		case "range":
			if _, err := netip.ParsePrefix(value); err != nil {
				errs = append(errs, fmt.Errorf("decisions.value %q: %v", value, err))
			}
		default:
			errs = append(errs, fmt.Errorf("decisions.scope %q", scope))
		}
	}
	return errors.Join(errs...)
}

// addDecision adds a stream decision.
func (f *fakeLAPI) addDecision(origin, typ, scope, value, scenario string, d time.Duration) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nextID++
	now := time.Now()
	f.decisions = append(f.decisions, &fakeDecision{ID: f.nextID, Origin: origin, Type: typ, Scope: scope, Value: value, Scenario: scenario, Until: now.Add(d), Created: now})
	return f.nextID
}

// expire ends a decision now (cscli decisions delete).
func (f *fakeLAPI) expire(id int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range f.decisions {
		if d.ID == id {
			d.Until, d.ExpiredAt = time.Now().Add(-time.Second), time.Now()
		}
	}
}

func (f *fakeLAPI) streamHandler(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Api-Key") != f.apiKey {
		f.mu.Lock()
		msg := "access forbidden"
		if f.loginMessage != "" {
			msg += ": " + f.loginMessage
		}
		f.mu.Unlock()
		writeJSON(w, 403, map[string]any{"message": msg})
		return
	}
	f.mu.Lock()
	f.streamCalls = append(f.streamCalls, r.URL.RawQuery)
	custom := f.stream
	f.mu.Unlock()
	if custom != nil {
		custom(w, r)
		return
	}
	q := r.URL.Query()
	startup := q.Get("startup") == "true"
	scopes := map[string]bool{}
	for _, s := range strings.Split(q.Get("scopes"), ",") {
		scopes[strings.ToLower(s)] = true
	}
	var origins map[string]bool
	if o := q.Get("origins"); o != "" {
		origins = map[string]bool{}
		for _, s := range strings.Split(o, ",") {
			origins[s] = true
		}
	}
	now := time.Now()
	f.mu.Lock()
	since := f.lastPull
	f.lastPull = now
	type wire struct {
		ID       int64  `json:"id"`
		Origin   string `json:"origin"`
		Type     string `json:"type"`
		Scope    string `json:"scope"`
		Value    string `json:"value"`
		Duration string `json:"duration"`
		Scenario string `json:"scenario"`
	}
	var news, dels []wire
	for _, d := range f.decisions {
		if !scopes[strings.ToLower(d.Scope)] || origins != nil && !origins[d.Origin] {
			continue
		}
		wd := wire{d.ID, d.Origin, d.Type, d.Scope, d.Value, d.Until.Sub(now).Round(time.Second).String(), d.Scenario}
		active := d.Until.After(now)
		switch {
		case active && (startup || d.Created.After(since)):
			news = append(news, wd)
		case !active && (startup || d.Until.After(since) || d.ExpiredAt.After(since)):
			dels = append(dels, wd)
		}
	}
	null := f.nullEmpty
	f.mu.Unlock()
	body := map[string]any{"new": news, "deleted": dels}
	if !null {
		if news == nil {
			body["new"] = []wire{}
		}
		if dels == nil {
			body["deleted"] = []wire{}
		}
	}
	writeJSON(w, 200, body)
}

func (f *fakeLAPI) calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.streamCalls...)
}

// config is a link to the fake with credentials in root-only files.
func (f *fakeLAPI) config(t testing.TB, push, pull bool) Config {
	c := Default()
	c.URL = f.url()
	c.Push, c.Pull = push, pull
	c.MachineID = f.machineID
	dir := t.TempDir()
	if push {
		c.PasswordFile = filepath.Join(dir, "password")
		writeFile(t, c.PasswordFile, f.password+"\n", 0o600)
	}
	if pull {
		c.APIKeyFile = filepath.Join(dir, "key")
		writeFile(t, c.APIKeyFile, f.apiKey+"\n", 0o600)
	}
	c.Timeout = time.Second
	c.PullTimeout = time.Second
	return c
}

func writeFile(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// recorder is an Applier that keeps every call.
type recorder struct {
	mu    sync.Mutex
	calls [][2][]Decision
}

func (r *recorder) Apply(n, d []Decision) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, [2][]Decision{n, d})
}

func (r *recorder) all() [][2][]Decision {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][2][]Decision(nil), r.calls...)
}

// logBuffer is a concurrency-safe log sink.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func testLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
