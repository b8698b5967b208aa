package daemon

import (
	"net/netip"
	"time"

	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/snapshot"
)

// growthMinHeld is the fewest ESTABLISHED entries a checkpoint records for
// a key; keys below it count as zero, which changes a gain by at most this
// much and keeps a table of 262,144 single-entry sources out of memory.
const growthMinHeld = 5

// checkpoint is what every source and grouping prefix held at one scan.
type checkpoint struct {
	at   time.Time
	held map[netip.Prefix]uint32
}

// growth keeps a few checkpoints within the growth window, so that each
// scan can be compared with one at most a window old.
type growth struct {
	cps []checkpoint
}

// maxCheckpoints bounds the memory: one checkpoint per quarter window.
const maxCheckpoints = 5

// maxSpan bounds, in growth windows, how old a checkpoint may be and still
// be compared with when the scans are slower than the window.
const maxSpan = 4

// observe returns the earlier holdings to compare snap with, then records
// snap. That is the oldest checkpoint within window; when there is none
// (a starved host's scans take longer than the window), the newest one
// up to maxSpan windows old, whose longer span the policy's bar accounts
// for; nil when there is none of either.
func (g *growth) observe(now time.Time, snap *snapshot.Snapshot, window time.Duration) *policy.Held {
	cut := 0
	for cut < len(g.cps) && now.Sub(g.cps[cut].at) > window {
		cut++
	}
	if cut == len(g.cps) && cut > 0 && now.Sub(g.cps[cut-1].at) <= maxSpan*window {
		cut-- // no younger checkpoint: keep the newest old one
	}
	g.cps = g.cps[cut:]
	var out *policy.Held
	if len(g.cps) > 0 && now.After(g.cps[0].at) {
		out = &policy.Held{Since: now.Sub(g.cps[0].at), Entries: g.cps[0].held}
	}
	if len(g.cps) > 0 && now.Sub(g.cps[len(g.cps)-1].at) < window/4 {
		return out // the newest checkpoint is recent enough
	}
	held := map[netip.Prefix]uint32{}
	for _, hs := range [][]snapshot.Holder{snap.Sources, snap.Prefixes} {
		for i := range hs {
			if n := policy.Established(&hs[i].Counts); n >= growthMinHeld {
				held[hs[i].Key] = n
			}
		}
	}
	g.cps = append(g.cps, checkpoint{at: now, held: held})
	if len(g.cps) > maxCheckpoints {
		g.cps = g.cps[len(g.cps)-maxCheckpoints:]
	}
	return out
}
