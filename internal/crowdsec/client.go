package crowdsec

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"
)

// Applier receives the LAPI's decisions, per prefix: ban each of new for
// its Remaining time (replacing an earlier CrowdSec ban of the same
// prefix), lift each of deleted. Apply is called from the pull loop, one
// call at a time; a slow Apply delays the next pull, nothing else.
//
// Deleted only names prefixes that CrowdSec banned: the applier must lift
// a ban only when it came from CrowdSec, never one of ctguard's own on the
// same prefix. After the first stream of a process, deleted may also name
// prefixes that the LAPI expired or removed while ctguard was not
// pulling, which ctguard may still hold from an earlier run.
type Applier interface {
	Apply(new, deleted []Decision)
}

// ApplyFunc adapts a function to Applier.
type ApplyFunc func(new, deleted []Decision)

// Apply calls f.
func (f ApplyFunc) Apply(new, deleted []Decision) { f(new, deleted) }

// Options are what the daemon gives a Client besides its Config.
type Options struct {
	// Logger receives the link's events; nil discards them.
	Logger *slog.Logger
	// UserAgent names ctguard to the LAPI ("ctguard/VERSION"), which shows
	// it in cscli bouncers list and cscli machines list.
	UserAgent string
	// Apply receives the pulled decisions; required when Config.Pull.
	Apply Applier
	// RetryMin and RetryMax bound the backoff after a failure (defaults
	// 1s and 2m).
	RetryMin, RetryMax time.Duration
	// BatchSize is how many alerts one request carries (default 50).
	BatchSize int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Client is the link to one LAPI: push, pull or both.
type Client struct {
	cfg     Config
	base    *url.URL
	http    *http.Client
	log     *slog.Logger
	ua      string
	now     func() time.Time
	retry   [2]time.Duration
	secrets []string

	push *pusher
	pull *puller

	runMu   sync.Mutex
	running bool
}

// New checks cfg, reads its secret files and makes the Client. It makes
// no request: Run does.
func New(cfg Config, opts Options) (*Client, error) {
	if !cfg.Enabled() {
		return nil, errors.New("crowdsec: neither push nor pull is on")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("crowdsec: %w", err)
	}
	if cfg.Pull && opts.Apply == nil {
		return nil, errors.New("crowdsec: pull needs an Applier")
	}
	base, err := parseBaseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("crowdsec: url: %w", err)
	}
	c := &Client{
		cfg:   cfg,
		base:  base,
		log:   opts.Logger,
		ua:    opts.UserAgent,
		now:   opts.Now,
		retry: [2]time.Duration{opts.RetryMin, opts.RetryMax},
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.log = c.log.With("component", "crowdsec")
	if c.ua == "" {
		c.ua = "ctguard"
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.retry[0] <= 0 {
		c.retry[0] = time.Second
	}
	if c.retry[1] < c.retry[0] {
		c.retry[1] = max(2*time.Minute, c.retry[0])
	}
	if c.http, err = newHTTPClient(&cfg); err != nil {
		return nil, fmt.Errorf("crowdsec: %w", err)
	}
	if base.Scheme == "http" && !isLoopback(base.Hostname()) {
		c.log.Warn("the LAPI URL is plain http to another host: the password, the token and the API key cross the network in clear", "url", base.Redacted())
	}
	if cfg.InsecureSkipVerify && base.Scheme == "https" {
		c.log.Warn("insecure_skip_verify is on: the LAPI's certificate is not checked")
	}
	if cfg.Push {
		password := string(cfg.Password)
		if cfg.PasswordFile != "" {
			if password, err = readSecretFile("password_file", cfg.PasswordFile, "password", cfg.MachineID); err != nil {
				return nil, fmt.Errorf("crowdsec: %w", err)
			}
		}
		if len(password) > maxPasswordLen {
			return nil, fmt.Errorf("crowdsec: password_file = %q: the password is longer than %d bytes, which the LAPI (bcrypt) cannot check", cfg.PasswordFile, maxPasswordLen)
		}
		c.addSecret(password)
		batch := opts.BatchSize
		if batch <= 0 {
			batch = 50
		}
		c.push = newPusher(c, password, batch)
	}
	if cfg.Pull {
		key := string(cfg.APIKey)
		if cfg.APIKeyFile != "" {
			if key, err = readSecretFile("api_key_file", cfg.APIKeyFile, "", ""); err != nil {
				return nil, fmt.Errorf("crowdsec: %w", err)
			}
		}
		if strings.ContainsFunc(key, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
			return nil, errors.New("crowdsec: the API key has spaces or characters outside printable ASCII, which an HTTP header cannot carry")
		}
		c.addSecret(key)
		c.pull = newPuller(c, key, opts.Apply)
	}
	return c, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// newHTTPClient makes the HTTP client: no proxy (the LAPI is a local
// service), no redirects (they could carry the key elsewhere), the TLS
// options of cfg.
func newHTTPClient(cfg *Config) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.MaxIdleConnsPerHost = 2
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureSkipVerify} //nolint:gosec // off unless asked for
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file = %q: %w", cfg.CAFile, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file = %q: no PEM certificate in it", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	tr.TLSClientConfig = tc
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}, nil
}

// addSecret remembers a credential to scrub from reports.
func (c *Client) addSecret(s string) {
	if len(s) >= 4 {
		c.secrets = append(c.secrets, s)
	}
}

// redact scrubs every credential (and token) out of s.
func (c *Client) redact(s string) string {
	for _, sec := range c.secrets {
		s = strings.ReplaceAll(s, sec, redacted)
	}
	if c.push != nil {
		if tok := c.push.currentToken(); len(tok) >= 4 {
			s = strings.ReplaceAll(s, tok, redacted)
		}
	}
	return s
}

// Run runs the push and pull loops until ctx ends. It makes no request
// before it is called, and returns nil when ctx ends. A Client runs once.
func (c *Client) Run(ctx context.Context) error {
	c.runMu.Lock()
	if c.running {
		c.runMu.Unlock()
		return errors.New("crowdsec: Run called twice")
	}
	c.running = true
	c.runMu.Unlock()
	var wg sync.WaitGroup
	if c.push != nil {
		wg.Go(func() { c.push.run(ctx) })
	}
	if c.pull != nil {
		wg.Go(func() { c.pull.run(ctx) })
	}
	wg.Wait()
	return nil
}

// Push queues a ban for the LAPI and returns at once. It does nothing when
// push is off; an alert that cannot be pushed (no prefix, no TTL) is
// counted as invalid.
func (c *Client) Push(a Alert) {
	if c.push != nil {
		c.push.enqueue(a)
	}
}

// Own reports whether a decision is one of this host's own (its scenario
// matches own_scenarios): ctguard already holds it and must not apply it
// again. The pull loop skips these itself.
func (c *Client) Own(d Decision) bool { return c.cfg.Own(d.Scenario) }

// Held lists the decisions pulled and held now, one per prefix (the one
// that runs longest), with their remaining time, in prefix order.
func (c *Client) Held() []Decision {
	if c.pull == nil {
		return nil
	}
	return c.pull.heldNow()
}

// Status is the state of the link.
type Status struct {
	URL  string     `json:"url"`
	Push PushStatus `json:"push"`
	Pull PullStatus `json:"pull"`
}

// Status reads the state of the link; it is safe at any time.
func (c *Client) Status() Status {
	s := Status{URL: c.base.Redacted()}
	if c.push != nil {
		s.Push = c.push.status()
	}
	if c.pull != nil {
		s.Pull = c.pull.status()
	}
	return s
}

// backoff is the wait after the n-th failure in a row: doubling from the
// minimum to the maximum, with jitter (half to all of it).
func (c *Client) backoff(n int, floor time.Duration) time.Duration {
	lo, hi := max(c.retry[0], floor), max(c.retry[1], floor)
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + rand.N(d/2+1)
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// endpoint is the URL of a path below the base, with a query.
func (c *Client) endpoint(path string, q url.Values) string {
	u := *c.base
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawQuery = q.Encode()
	return u.String()
}

// request makes one request: JSON body (when not nil), the user agent and
// the extra headers.
func (c *Client) request(ctx context.Context, method, path string, q url.Values, body any, hdr map[string]string) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encode %s body: %w", path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.endpoint(path, q), rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", c.ua)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &scrubbed{msg: c.redact(err.Error()), err: err}
	}
	return resp, nil
}

// scrubbed is an error whose text has the credentials taken out; it still
// unwraps to the original for errors.Is.
type scrubbed struct {
	msg string
	err error
}

func (e *scrubbed) Error() string { return e.msg }
func (e *scrubbed) Unwrap() error { return e.err }

// StatusError is a LAPI answer other than the expected one.
type StatusError struct {
	Code    int
	Message string // the LAPI's message, credentials scrubbed
}

func (e *StatusError) Error() string {
	s := fmt.Sprintf("LAPI answered %d %s", e.Code, http.StatusText(e.Code))
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// statusError reads (a bounded part of) an unexpected answer into a
// StatusError and closes its body.
func (c *Client) statusError(resp *http.Response) error {
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return &StatusError{Code: resp.StatusCode, Message: c.redact(lapiMessage(b))}
}

// lapiMessage is the message of a LAPI error body ({"message": ...}), or
// the start of the body, printable characters only.
func lapiMessage(b []byte) string {
	var m struct {
		Message string `json:"message"`
	}
	s := string(b)
	if json.Unmarshal(b, &m) == nil && m.Message != "" {
		s = m.Message
	}
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, s)
	return clip(strings.TrimSpace(s))
}

// drain discards what is left of a body (bounded) so that the connection
// can be reused, and closes it.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// linkState is what both loops report.
type linkState struct {
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// Failures counts the failures since the last success.
	Failures int `json:"failures"`
}
