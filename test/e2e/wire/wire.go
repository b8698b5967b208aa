// Package wire defines the JSON-lines records that the lab's processes
// (server, generators, probes, monitor, defenses) write on stdout and the
// scenario runner reads. Every record carries a wall-clock time in Unix
// milliseconds so the runner can align records from different namespaces.
package wire

import (
	"encoding/json"
	"io"
	"sync"
	"time"
)

// Record is one line. Kind says which of the optional parts is set.
type Record struct {
	Kind string `json:"kind"` // "ready", "sample", "probe", "progress", "ban", "scan", "op", "log"
	T    int64  `json:"t"`    // Unix ms

	Sample   *Sample   `json:"sample,omitempty"`
	Probe    *Probe    `json:"probe,omitempty"`
	Progress *Progress `json:"progress,omitempty"`
	Ban      *Ban      `json:"ban,omitempty"`
	Scan     *Scan     `json:"scan,omitempty"`
	Op       *Op       `json:"op,omitempty"`
	Msg      string    `json:"msg,omitempty"`
}

// Sample is one monitor tick in the victim namespace.
type Sample struct {
	Count        int64            `json:"count"`
	Max          int64            `json:"max"`
	Drop         int64            `json:"drop"`             // cumulative, all CPUs
	EarlyDrop    int64            `json:"early_drop"`       // cumulative
	InsertFailed int64            `json:"insert_failed"`    // cumulative
	States       map[string]int64 `json:"states,omitempty"` // only on state-sampling ticks
	// AttackHeld: entries whose original source is in an attack range, on
	// state-sampling ticks (HeldSampled) only.
	AttackHeld  int64    `json:"attack_held,omitempty"`
	HeldSampled bool     `json:"held_sampled,omitempty"`
	Bans        []string `json:"bans,omitempty"` // full ban list, only when it changed
	BansChanged bool     `json:"bans_changed,omitempty"`
	// ScopedBans are the bans among Bans that leave the SSH ports open
	// (ctguard's *_but_ssh sets), sent with Bans.
	ScopedBans []string `json:"scoped_bans,omitempty"`
	// Watch: entries per watched target (the monitor's --watch list, in
	// order: original source address and destination port), on the ticks
	// after a watch walk (WatchSampled) only.
	Watch        []int64 `json:"watch,omitempty"`
	WatchSampled bool    `json:"watch_sampled,omitempty"`
	// DefenseDrops is the packets the defense's own drop rules have dropped
	// (the counters of the rules that drop in its nftables table),
	// cumulative; only with a table to read.
	DefenseDrops int64 `json:"defense_drops,omitempty"`
}

// Probe is the outcome of one legit connection attempt.
type Probe struct {
	Src       string  `json:"src"`
	OK        bool    `json:"ok"`
	LatencyMS float64 `json:"latency_ms"`
	Err       string  `json:"err,omitempty"`
}

// Progress is a generator's running total.
type Progress struct {
	Gen    string `json:"gen"`
	Sent   int64  `json:"sent"`   // connections opened or packets sent
	Failed int64  `json:"failed"` // failed attempts
	Live   int64  `json:"live"`   // currently open connections (NAT gateways, crowd)
	// PeakLive is the most connections open at once so far.
	PeakLive int64 `json:"peak_live,omitempty"`
	// Pings and PingFailed count the keep-alive bots' writes on open
	// connections.
	Pings      int64 `json:"pings,omitempty"`
	PingFailed int64 `json:"ping_failed,omitempty"`
	Done       bool  `json:"done"`
}

// Op is one command of the SSH operator: sent through the one session it
// holds, ok if the answer came back in time. Login marks the session's
// first round trip (not a command).
type Op struct {
	Seq       int     `json:"seq"`
	OK        bool    `json:"ok"`
	LatencyMS float64 `json:"latency_ms"`
	Login     bool    `json:"login,omitempty"`
	Err       string  `json:"err,omitempty"`
}

// Ban is one address a defense banned.
type Ban struct {
	Addr    string `json:"addr"`
	Entries int    `json:"entries"`
	Deleted int    `json:"deleted"`
}

// Scan is one run of a periodic defense.
type Scan struct {
	Entries   int   `json:"entries"`
	Offenders int   `json:"offenders"`
	DurMS     int64 `json:"dur_ms"`
}

// Writer serialises records to one stream; safe for concurrent use.
type Writer struct {
	mu  sync.Mutex
	enc *json.Encoder
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer) *Writer { return &Writer{enc: json.NewEncoder(w)} }

// Write stamps r with the current time if unset and writes it. Errors are
// returned so a generator can stop when its reader went away.
func (w *Writer) Write(r Record) error {
	if r.T == 0 {
		r.T = time.Now().UnixMilli()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.enc.Encode(r)
}
