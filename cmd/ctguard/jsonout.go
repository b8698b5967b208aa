package main

import (
	"encoding/json"
	"io"
	"net/netip"
	"time"

	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/store"
)

// outputSchema versions the JSON every command prints with --json
// (snake_case keys, durations in seconds, times RFC 3339 UTC; README,
// "Output").
const outputSchema = 1

// actionJSON is what one target of ban, unban or purge became.
type actionJSON struct {
	Schema        int        `json:"schema"`
	Time          time.Time  `json:"time"`
	Command       string     `json:"command"`
	DryRun        bool       `json:"dry_run,omitempty"`
	Target        string     `json:"target"`
	Result        string     `json:"result"` // banned, re-banned, covered, refused, unbanned, not-banned, purged, allowlisted, removed, failed
	Error         string     `json:"error,omitempty"`
	TTLSeconds    float64    `json:"ttl_seconds,omitempty"`
	Expires       *time.Time `json:"expires,omitempty"`
	Count         int        `json:"count,omitempty"` // times banned
	Purged        int        `json:"purged"`
	Remaining     int        `json:"remaining"`
	SocketsClosed int        `json:"sockets_closed"`
	SSHLeftOpen   bool       `json:"ssh_left_open,omitempty"`
	CoveredBy     string     `json:"covered_by,omitempty"`
	Replaced      []string   `json:"replaced,omitempty"`
	// allow: the bans it lifted, and the rest of wider ones kept banned.
	Lifted     []string `json:"lifted,omitempty"`
	KeptBanned []string `json:"kept_banned,omitempty"`
}

// envelope starts every JSON object a command prints: the schema version
// of its output, when it was made, and which command made it.
type envelope struct {
	Schema  int       `json:"schema"`
	Time    time.Time `json:"time"`
	Command string    `json:"command"`
}

func newEnvelope(cmd string) envelope {
	return envelope{Schema: outputSchema, Time: stamp(), Command: cmd}
}

// writeJSON writes v as indented JSON in the output convention (view).
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(view(v))
}

// stamp is the time every JSON object carries: now, UTC, whole seconds.
func stamp() time.Time { return time.Now().UTC().Truncate(time.Second) }

func newAction(cmd string, p netip.Prefix, dry bool) actionJSON {
	return actionJSON{Schema: outputSchema, Time: stamp(), Command: cmd, DryRun: dry, Target: p.String()}
}

func banAction(r enforce.BanResult, dry bool) actionJSON {
	a := newAction("ban", r.Prefix, dry)
	switch {
	case r.Err != nil:
		a.Result, a.Error = "refused", r.Err.Error()
		return a
	case r.CoveredBy.IsValid():
		a.Result, a.CoveredBy = "covered", r.CoveredBy.String()
		return a
	case r.Refreshed:
		a.Result = "re-banned"
	default:
		a.Result = "banned"
	}
	a.TTLSeconds = r.TTL.Seconds()
	exp := r.Ban.Expires.UTC()
	a.Expires = &exp
	a.Count, a.Purged, a.Remaining, a.SocketsClosed, a.SSHLeftOpen = r.Ban.Count, r.Ban.Purged, r.Ban.Remaining, r.Ban.SocketsClosed, r.Scoped
	for _, q := range r.Replaced {
		a.Replaced = append(a.Replaced, q.String())
	}
	return a
}

func unbanAction(p netip.Prefix, b store.Ban, err error, dry bool) actionJSON {
	a := newAction("unban", p, dry)
	if err != nil {
		a.Result, a.Error = "not-banned", err.Error()
		return a
	}
	a.Result, a.Count = "unbanned", b.Count
	return a
}

// printAction writes one command's result; a failed call marks it
// "failed" with its error, which is returned for the exit status.
func printAction(e *env, a actionJSON, err error) error {
	if err != nil {
		a.Result, a.Error = "failed", err.Error()
	}
	if jerr := writeActions(e.stdout, a); jerr != nil {
		return jerr
	}
	return err
}

// writeActions writes v as indented JSON (one object, or an array for a list).
func writeActions(w io.Writer, v any) error { return writeJSON(w, v) }
