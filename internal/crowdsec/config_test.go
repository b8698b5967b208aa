package crowdsec

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Enabled() || c.InsecureSkipVerify {
		t.Errorf("default %+v: want off, certificates checked", c)
	}
	c.Push, c.Password = true, "pw-0123456789"
	c.Pull, c.APIKey = true, "key-0123456789"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Default(), Options{}); err == nil {
		t.Error("New with both directions off")
	}
	if _, err := New(c, Options{}); err == nil || !strings.Contains(err.Error(), "Applier") {
		t.Errorf("pull without an Applier: %v", err)
	}
	c.Pull = false
	cl, err := New(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := cl.Run(ctx); err != nil {
		t.Errorf("Run: %v", err)
	}
	if err := cl.Run(ctx); err == nil {
		t.Error("Run twice")
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	dir := t.TempDir()
	c := Default()
	c.Push, c.Pull = true, true
	c.URL = "ftp://user:pw@lapi/"
	c.MachineID = "has space"
	c.Password, c.PasswordFile = "x", filepath.Join(dir, "p")
	c.Scenario = "other/scenario"
	c.QueueSize = 0
	c.Timeout = 0
	c.PullInterval = time.Millisecond
	c.PullTimeout = time.Hour
	c.Origins = []string{"CAPI,lists", ""}
	c.Scenarios = []string{" "}
	c.MaxDecisions = 0
	c.MinPrefixV4, c.MinPrefixV6 = 33, -1
	c.MaxBodyBytes = 10
	c.CAFile = filepath.Join(dir, "missing.pem")
	c.InsecureSkipVerify = true
	err := c.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, key := range []string{"url =", "machine_id =", "password and password_file", "api_key_file: pull needs", "scenario =",
		"queue_size =", "timeout =", "pull_interval =", "pull_timeout =", `origins: "CAPI,lists"`, `origins: ""`, "scenarios: an empty pattern",
		"max_decisions =", "min_prefix_v4 =", "min_prefix_v6 =", "max_body_bytes =", "ca_file and insecure_skip_verify", "ca_file = "} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("no %q in:\n%v", key, err)
		}
	}
	if strings.Contains(err.Error(), "user:pw") {
		t.Errorf("the URL's credentials are in the error: %v", err)
	}
}

func TestURLs(t *testing.T) {
	for s, ok := range map[string]bool{
		"http://127.0.0.1:8080":       true,
		"http://127.0.0.1:8080/":      true,
		"https://lapi.example/cs/":    true,
		"http://[::1]:8080/":          true,
		"":                            false,
		"127.0.0.1:8080":              false,
		"http://":                     false,
		"http://u:p@127.0.0.1:8080/":  false,
		"http://127.0.0.1:8080/?x=1":  false,
		"unix:///run/crowdsec.sock":   false,
		"http://127.0.0.1:8080/#frag": false,
	} {
		if _, err := parseBaseURL(s); (err == nil) != ok {
			t.Errorf("%q: %v", s, err)
		}
	}
	c := &Client{base: mustURL(t, "https://lapi.example/cs")}
	if got := c.endpoint("/v1/alerts", nil); got != "https://lapi.example/cs/v1/alerts" {
		t.Errorf("endpoint %s", got)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := parseBaseURL(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestSecretFileMode(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		mode os.FileMode
		ok   bool
	}{{0o600, true}, {0o400, true}, {0o640, false}, {0o644, false}, {0o604, false}, {0o620, false}} {
		path := filepath.Join(dir, fmt.Sprintf("key-%o", tc.mode))
		writeFile(t, path, "key-0123456789\n", tc.mode)
		c := Default()
		c.Pull, c.APIKeyFile = true, path
		err := c.Validate()
		if tc.ok != (err == nil) {
			t.Errorf("mode %04o: %v", tc.mode, err)
			continue
		}
		if err != nil {
			msg := err.Error()
			want := fmt.Sprintf("api_key_file = %q: mode %04o gives group or others access to a secret; make it root-only: chmod 600 %s", path, tc.mode, path)
			if msg != want {
				t.Errorf("error\n%s\nwant\n%s", msg, want)
			}
			if _, err := New(c, Options{Apply: &recorder{}}); err == nil || !strings.Contains(err.Error(), path) {
				t.Errorf("New took a file of mode %04o: %v", tc.mode, err)
			}
		}
	}
	c := Default()
	c.Push, c.PasswordFile = true, dir
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory: %v", err)
	}
	c.PasswordFile = filepath.Join(dir, "missing")
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("a missing file: %v", err)
	}
}

func TestPasswordFileForms(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		content, want, err string
	}{
		"bare":          {"pw-abc\n", "pw-abc", ""},
		"cscli":         {"url: http://127.0.0.1:8080/\nlogin: ctguard\npassword: Xy7Gq2\n", "Xy7Gq2", ""},
		"cscli quoted":  {"login: ctguard\npassword: 'it''s:x'\n", "it's:x", ""},
		"other machine": {"login: web1\npassword: Xy7Gq2secret\n", "", `a credentials file for machine "web1", not "ctguard"`},
		"empty":         {"\n\n", "", "empty"},
		"two lines":     {"abc-secret1\ndef-secret2\n", "", "2 lines and no password: key"},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		writeFile(t, path, tc.content, 0o600)
		got, err := readSecretFile("password_file", path, "password", "ctguard")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", name, err, tc.err)
			}
			for _, s := range []string{"Xy7Gq2secret", "abc-secret1", "def-secret2"} {
				if err != nil && strings.Contains(err.Error(), s) {
					t.Errorf("%s: the error quotes the secret: %v", name, err)
				}
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", name, got, err, tc.want)
		}
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	c := Default()
	c.Password, c.APIKey = "pw-visible-9931", "key-visible-7713"
	var logs bytes.Buffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("config", "cfg", c, "password", c.Password)
	js, _ := json.Marshal(c)
	var tb bytes.Buffer
	if err := toml.NewEncoder(&tb).Encode(c); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]string{
		"%v": fmt.Sprintf("%v", c), "%+v": fmt.Sprintf("%+v", c), "%#v": fmt.Sprintf("%#v", c), "%s": fmt.Sprintf("%s", c.Password),
		"slog": logs.String(), "json": string(js), "toml": tb.String(),
	} {
		if strings.Contains(s, "visible") {
			t.Errorf("%s shows a secret: %s", name, s)
		}
		if !strings.Contains(s, redacted) {
			t.Errorf("%s does not say %s: %s", name, redacted, s)
		}
	}
	var back Config
	if _, err := toml.Decode(`password = "from-toml"`, &back); err != nil || string(back.Password) != "from-toml" {
		t.Errorf("decode: %q, %v", back.Password, err)
	}
}

func TestTLSWithCAFile(t *testing.T) {
	f := newFakeLAPI(t)
	f.startOnce.Do(f.srv.StartTLS)
	cfg := f.config(t, true, false)
	// A TLS handshake under -race on a loaded machine can take over the
	// fake's usual 1 s: a timeout here would hide the certificate error.
	cfg.Timeout = 10 * time.Second
	c := startClient(t, cfg, Options{})
	c.Push(testAlert("192.0.2.1/32", time.Hour))
	eventually(t, 15*time.Second, "a certificate error", func() bool { return c.Status().Push.Failures >= 1 })
	if e := c.Status().Push.LastError; !strings.Contains(e, "certificate") {
		t.Errorf("without the CA: %q", e)
	}

	ca := filepath.Join(t.TempDir(), "ca.pem")
	writeFile(t, ca, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})), 0o644)
	cfg.CAFile = ca
	c = startClient(t, cfg, Options{})
	c.Push(testAlert("192.0.2.2/32", time.Hour))
	eventually(t, 15*time.Second, "delivery over TLS", func() bool { return len(f.sentAlerts()) == 1 })

	writeFile(t, ca, "not a certificate", 0o644)
	if _, err := New(cfg, Options{}); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("bad CA file: %v", err)
	}
}

func TestNoRedirects(t *testing.T) {
	var hits atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
	}))
	defer target.Close()
	f := newFakeLAPI(t)
	f.stream = func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/steal", http.StatusFound)
	}
	c, _, _ := newPullClient(t, f, nil)
	err := c.pull.pullOnce(context.Background(), true)
	if err == nil || !strings.Contains(err.Error(), "302") {
		t.Errorf("err %v", err)
	}
	if hits.Load() != 0 {
		t.Error("the redirect was followed with the key")
	}
}
