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
	Kind string `json:"kind"` // "ready", "sample", "probe", "progress", "ban", "scan", "log"
	T    int64  `json:"t"`    // Unix ms

	Sample   *Sample   `json:"sample,omitempty"`
	Probe    *Probe    `json:"probe,omitempty"`
	Progress *Progress `json:"progress,omitempty"`
	Ban      *Ban      `json:"ban,omitempty"`
	Scan     *Scan     `json:"scan,omitempty"`
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
	Done   bool   `json:"done"`
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
