package enforce

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/ctguard/ctguard/internal/conntrack"
)

// EntryPurger is a Purger that can also walk the table and delete chosen
// entries: the emergency valve needs it (*conntrack.Conn is one).
type EntryPurger interface {
	Dump(ctx context.Context, o conntrack.DumpOptions, fn func(*conntrack.Entry) error) error
	DeleteEntries(ctx context.Context, es []conntrack.Entry) (int, error)
}

// ValveRequest asks the valve to delete up to Free entries of Holders
// (source addresses). Rank orders the candidates: the highest ranks go
// first; ok false leaves an entry alone.
type ValveRequest struct {
	Holders []netip.Prefix
	Free    int
	Rank    func(e *conntrack.Entry) (rank uint64, ok bool)
	// Sweep takes the entries of any source that is not allowlisted, not
	// only the holders': when the table is full of sources that each hold
	// little (a botnet of many addresses), no holder frees enough.
	Sweep bool
}

// ValveResult is what a valve run did.
type ValveResult struct {
	Candidates int // entries of the holders that Rank accepted
	Deleted    int
}

// ErrNoEntryPurger: the purger cannot walk and delete single entries.
var ErrNoEntryPurger = errors.New("this conntrack access cannot delete single entries: the valve is off")

// Valve frees room in a full table: it deletes the highest-ranked entries
// of the holders, never a TCP entry to an SSH port (the operator's way in)
// and never an allowlisted source's. A live connection whose entry is
// deleted is picked up again by conntrack at its next packet.
func (e *Engine) Valve(ctx context.Context, r ValveRequest) (ValveResult, error) {
	ep, ok := e.purger.(EntryPurger)
	if !ok {
		return ValveResult{}, ErrNoEntryPurger
	}
	if r.Free <= 0 || (len(r.Holders) == 0 && !r.Sweep) {
		return ValveResult{}, nil
	}
	list, err := e.Allowlist()
	if err != nil {
		return ValveResult{}, fmt.Errorf("valve: allowlist: %w", err)
	}
	holders := make(map[netip.Addr]bool, len(r.Holders))
	for _, h := range r.Holders {
		if _, allowed := list.Check(h); !allowed && h.IsSingleIP() {
			holders[h.Addr()] = true
		}
	}
	ssh := e.SSHPorts()
	var res ValveResult
	top := &ranked{}
	err = ep.Dump(ctx, conntrack.DumpOptions{Status: conntrack.StatusAssured, StatusMask: conntrack.StatusAssured}, func(en *conntrack.Entry) error {
		if en.Proto == conntrack.ProtoTCP && slices.Contains(ssh, en.Orig.DstPort) {
			return nil
		}
		if !holders[en.Orig.Src] && !r.Sweep {
			return nil
		}
		rank, ok := r.Rank(en)
		if !ok {
			return nil
		}
		if !holders[en.Orig.Src] {
			// Sweeping: checked after the rank, which already left most
			// entries out, because the allowlist check costs more.
			if _, allowed := list.Check(netip.PrefixFrom(en.Orig.Src, en.Orig.Src.BitLen())); allowed {
				return nil
			}
		}
		res.Candidates++
		top.keep(rankedEntry{*en, rank}, r.Free)
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("valve: dump: %w", err)
	}
	es := make([]conntrack.Entry, len(*top))
	for i, v := range *top {
		es[i] = v.e
	}
	res.Deleted, err = ep.DeleteEntries(ctx, es)
	if err != nil {
		return res, fmt.Errorf("valve: delete %d entries: %w", len(es), err)
	}
	return res, nil
}

type rankedEntry struct {
	e    conntrack.Entry
	rank uint64
}

// ranked is a min-heap on rank: it keeps the n highest seen.
type ranked []rankedEntry

func (h *ranked) keep(v rankedEntry, n int) {
	if h.Len() < n {
		heap.Push(h, v)
	} else if n > 0 && v.rank > (*h)[0].rank {
		(*h)[0] = v
		heap.Fix(h, 0)
	}
}

func (h ranked) Len() int           { return len(h) }
func (h ranked) Less(i, j int) bool { return h[i].rank < h[j].rank }
func (h ranked) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *ranked) Push(x any)        { *h = append(*h, x.(rankedEntry)) }
func (h *ranked) Pop() any {
	old := *h
	v := old[len(old)-1]
	*h = old[:len(old)-1]
	return v
}
