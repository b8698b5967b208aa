package crowdsec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// PushStatus is the state of the push side.
type PushStatus struct {
	Enabled bool `json:"enabled"`
	linkState
	// LoggedIn reports a token in hand, valid until TokenExpires.
	LoggedIn     bool      `json:"logged_in"`
	TokenExpires time.Time `json:"token_expires,omitzero"`
	Logins       uint64    `json:"logins"`
	// Queued alerts wait for the LAPI (a batch in flight included).
	Queued int `json:"queued"`
	// Sent alerts the LAPI took; Dropped ones fell off a full queue;
	// Rejected ones the LAPI refused as malformed (400/422); Expired ones
	// waited past their ban's end; Invalid ones could not be made.
	Sent     uint64 `json:"sent"`
	Dropped  uint64 `json:"dropped"`
	Rejected uint64 `json:"rejected"`
	Expired  uint64 `json:"expired"`
	Invalid  uint64 `json:"invalid"`
}

// queued is an alert waiting for the LAPI.
type queued struct {
	alert wireAlert
	ends  time.Time // when its ban ends: not worth sending after
}

// pusher is the watcher side: a bounded queue and the loop that logs in
// and posts it.
type pusher struct {
	c        *Client
	password string
	batch    int
	wake     chan struct{}

	mu       sync.Mutex
	queue    []queued
	inflight int
	token    string
	renewAt  time.Time
	st       PushStatus
}

func newPusher(c *Client, password string, batch int) *pusher {
	return &pusher{c: c, password: password, batch: batch, wake: make(chan struct{}, 1), st: PushStatus{Enabled: true}}
}

// enqueue adds an alert, dropping the oldest one when the queue is full,
// and wakes the loop. It never blocks on the network.
func (p *pusher) enqueue(a Alert) {
	now := p.c.now()
	w, err := a.wire(p.c.cfg.Scenario, now)
	if err != nil {
		p.mu.Lock()
		p.st.Invalid++
		p.mu.Unlock()
		p.c.log.Warn("alert not queued", "err", err)
		return
	}
	at := a.At
	if at.IsZero() {
		at = now
	}
	q := queued{alert: w, ends: at.Add(a.TTL)}
	var dropped uint64
	p.mu.Lock()
	if len(p.queue) >= p.c.cfg.QueueSize {
		p.queue = p.queue[1:]
		p.st.Dropped++
		dropped = p.st.Dropped
	}
	p.queue = append(p.queue, q)
	p.mu.Unlock()
	if dropped&(dropped-1) == 0 && dropped > 0 { // 1, 2, 4, 8, ...: the log stays readable in a flood
		p.c.log.Warn("alert queue full: dropped the oldest alert", "dropped_total", dropped, "queue_size", p.c.cfg.QueueSize)
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// take moves the next batch out of the queue (in flight), skipping the
// alerts whose ban has ended.
func (p *pusher) take() []queued {
	now := p.c.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []queued
	for len(p.queue) > 0 && len(out) < p.batch {
		q := p.queue[0]
		p.queue = p.queue[1:]
		if !q.ends.After(now) {
			p.st.Expired++
			continue
		}
		out = append(out, q)
	}
	if len(p.queue) == 0 {
		p.queue = nil // let the array go
	}
	p.inflight = len(out)
	return out
}

// requeue puts a batch that failed back in front, within the bound (its
// oldest alerts are the ones dropped).
func (p *pusher) requeue(batch []queued) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inflight = 0
	room := p.c.cfg.QueueSize - len(p.queue)
	if room < len(batch) {
		drop := len(batch) - max(room, 0)
		p.st.Dropped += uint64(drop)
		batch = batch[drop:]
	}
	p.queue = append(batch[:len(batch):len(batch)], p.queue...)
}

// FlushTimeout bounds how long a stopping daemon tries to send the alerts
// still queued (they live in memory only): a LAPI that is down costs the
// shutdown this much, never more.
const FlushTimeout = 3 * time.Second

func (p *pusher) run(ctx context.Context) {
	defer p.flush()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		}
		if !p.drain(ctx) {
			return
		}
	}
}

// drain sends the queue until it is empty; false when ctx ended.
func (p *pusher) drain(ctx context.Context) bool {
	for {
		batch := p.take()
		if len(batch) == 0 {
			return true
		}
		err := p.send(ctx, batch)
		if ctx.Err() != nil {
			p.requeue(batch)
			return false
		}
		var se *StatusError
		switch {
		case err == nil:
			p.sent(batch)
		case errors.As(err, &se) && (se.Code == http.StatusBadRequest || se.Code == http.StatusUnprocessableEntity):
			// The LAPI will never take what it refused as malformed, so
			// retrying the batch would block the queue; one bad alert must
			// not cost the others either: each is sent alone once.
			if len(batch) == 1 {
				p.rejected(batch, err)
				continue
			}
			p.c.log.Warn("LAPI refused a batch of alerts; sending them one by one", "count", len(batch), "err", p.c.redact(err.Error()))
			if !p.sendEach(ctx, batch) {
				return false
			}
		default:
			if !p.failed(ctx, batch, err) {
				return false
			}
		}
	}
}

// sendEach sends each alert of a refused batch alone: those the LAPI takes
// count as sent, those it refuses again as rejected. A failure of another
// kind puts the rest back and backs off; false when ctx ended.
func (p *pusher) sendEach(ctx context.Context, batch []queued) bool {
	for i, q := range batch {
		one := []queued{q}
		p.mu.Lock()
		p.inflight = len(batch) - i
		p.mu.Unlock()
		err := p.send(ctx, one)
		if ctx.Err() != nil {
			p.requeue(batch[i:])
			return false
		}
		var se *StatusError
		switch {
		case err == nil:
			p.sent(one)
		case errors.As(err, &se) && (se.Code == http.StatusBadRequest || se.Code == http.StatusUnprocessableEntity):
			p.rejected(one, err)
		default:
			return p.failed(ctx, batch[i:], err)
		}
	}
	return true
}

// sent counts a batch the LAPI took.
func (p *pusher) sent(batch []queued) {
	p.mu.Lock()
	p.inflight = 0
	p.st.Sent += uint64(len(batch))
	p.st.LastSuccess = p.c.now()
	recovered := p.st.Failures
	p.st.Failures = 0
	p.mu.Unlock()
	if recovered > 0 {
		p.c.log.Info("LAPI takes alerts again", "after_failures", recovered, "sent", len(batch))
	} else {
		p.c.log.Debug("alerts sent", "count", len(batch))
	}
}

// rejected counts alerts the LAPI refused as malformed.
func (p *pusher) rejected(batch []queued, err error) {
	msg := p.c.redact(err.Error())
	p.mu.Lock()
	p.inflight = 0
	p.st.Rejected += uint64(len(batch))
	p.setError(msg)
	p.mu.Unlock()
	p.c.log.Error("LAPI refused alerts", "count", len(batch), "err", msg)
}

// failed puts a batch back after a failure that may pass (the LAPI down,
// slow, or overloaded) and waits before the next try; false when ctx
// ended meanwhile.
func (p *pusher) failed(ctx context.Context, batch []queued, err error) bool {
	p.requeue(batch)
	msg := p.c.redact(err.Error())
	p.mu.Lock()
	p.st.Failures++
	n := p.st.Failures
	p.setError(msg)
	p.mu.Unlock()
	wait := p.c.backoff(n, 0)
	p.c.log.Warn("alerts not sent, retrying", "err", msg, "failures", n, "retry_in", wait.Round(time.Millisecond))
	return sleep(ctx, wait)
}

// flush tries once, within FlushTimeout, to send what is still queued
// when the loop stops (the daemon is stopping): alerts are kept in memory
// only. What cannot be sent in time is counted as dropped and logged.
func (p *pusher) flush() {
	p.mu.Lock()
	n := len(p.queue)
	p.mu.Unlock()
	if n == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), FlushTimeout)
	defer cancel()
	for {
		batch := p.take()
		if len(batch) == 0 {
			p.c.log.Info("alerts sent before stopping", "count", n)
			return
		}
		err := p.send(ctx, batch)
		if err == nil {
			p.sent(batch)
			continue
		}
		var se *StatusError
		if errors.As(err, &se) && (se.Code == http.StatusBadRequest || se.Code == http.StatusUnprocessableEntity) {
			p.rejected(batch, err)
			continue
		}
		p.requeue(batch)
		p.mu.Lock()
		lost := len(p.queue)
		p.st.Dropped += uint64(lost)
		p.queue = nil
		p.mu.Unlock()
		p.c.log.Warn("alerts not sent before stopping: lost (they are kept in memory only)", "count", lost, "err", p.c.redact(err.Error()))
		return
	}
}

// setError records an error message (already redacted); p.mu is held.
func (p *pusher) setError(msg string) {
	p.st.LastError = msg
	p.st.LastErrorAt = p.c.now()
}

// send posts a batch, logging in first when the token is missing or about
// to expire, and once more when the LAPI says 401.
func (p *pusher) send(ctx context.Context, batch []queued) error {
	tok, err := p.validToken(ctx)
	if err != nil {
		return err
	}
	body := make([]wireAlert, len(batch))
	for i, q := range batch {
		body[i] = q.alert
	}
	err = p.postAlerts(ctx, tok, body)
	if se := (*StatusError)(nil); errors.As(err, &se) && se.Code == http.StatusUnauthorized {
		p.c.log.Info("LAPI refused the token: logging in again")
		p.mu.Lock()
		if p.token == tok {
			p.token = ""
		}
		p.mu.Unlock()
		if tok, err = p.login(ctx); err != nil {
			return err
		}
		err = p.postAlerts(ctx, tok, body)
	}
	return err
}

func (p *pusher) currentToken() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.token
}

// validToken is the token in hand, or a new one when it is missing or
// due for renewal.
func (p *pusher) validToken(ctx context.Context) (string, error) {
	p.mu.Lock()
	tok, renew := p.token, p.renewAt
	p.mu.Unlock()
	if tok != "" && p.c.now().Before(renew) {
		return tok, nil
	}
	return p.login(ctx)
}

// loginRequest is the LAPI's WatcherAuthRequest.
type loginRequest struct {
	MachineID string   `json:"machine_id"`
	Password  string   `json:"password"`
	Scenarios []string `json:"scenarios"`
}

// loginResponse is the LAPI's WatcherAuthResponse.
type loginResponse struct {
	Code   int    `json:"code"`
	Expire string `json:"expire"`
	Token  string `json:"token"`
}

// defaultTokenLife is assumed when the LAPI's expire does not parse (it
// gives tokens one hour).
const defaultTokenLife = 30 * time.Minute

// login gets a token: POST /v1/watchers/login.
func (p *pusher) login(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, p.c.cfg.Timeout)
	defer cancel()
	mid := p.c.cfg.MachineID
	fail := func(err error) (string, error) {
		return "", fmt.Errorf("login as machine %q: %w", mid, err)
	}
	resp, err := p.c.request(ctx, http.MethodPost, "/v1/watchers/login", nil,
		loginRequest{MachineID: mid, Password: p.password, Scenarios: []string{p.c.cfg.Scenario}}, nil)
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK {
		return fail(p.c.statusError(resp))
	}
	var r loginResponse
	err = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&r)
	drain(resp)
	if err != nil {
		return fail(fmt.Errorf("answer: %s", p.c.redact(err.Error())))
	}
	if r.Token == "" {
		return fail(errors.New("answer has no token"))
	}
	now := p.c.now()
	exp, err := time.Parse(time.RFC3339, r.Expire)
	if err != nil || !exp.After(now) {
		p.c.log.Debug("token expiry unreadable or past: assuming a short life", "expire", clip(r.Expire))
		exp = now.Add(defaultTokenLife)
	}
	// Renew a minute before the end (half-way for a short-lived token).
	renew := exp.Add(-min(time.Minute, exp.Sub(now)/2))
	p.mu.Lock()
	p.token, p.renewAt = r.Token, renew
	p.st.Logins++
	p.st.TokenExpires = exp
	p.mu.Unlock()
	p.c.log.Debug("logged in to the LAPI", "machine_id", mid, "token_expires", exp)
	return r.Token, nil
}

// postAlerts posts alerts: POST /v1/alerts.
func (p *pusher) postAlerts(ctx context.Context, tok string, alerts []wireAlert) error {
	ctx, cancel := context.WithTimeout(ctx, p.c.cfg.Timeout)
	defer cancel()
	resp, err := p.c.request(ctx, http.MethodPost, "/v1/alerts", nil, alerts, map[string]string{"Authorization": "Bearer " + tok})
	if err != nil {
		return fmt.Errorf("post alerts: %w", err)
	}
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("post alerts: %w", p.c.statusError(resp))
	}
	drain(resp)
	return nil
}

func (p *pusher) status() PushStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.st
	s.Queued = len(p.queue) + p.inflight
	s.LoggedIn = p.token != "" && p.c.now().Before(s.TokenExpires)
	return s
}
