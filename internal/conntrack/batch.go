package conntrack

import (
	"context"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// batchSize bounds the messages per sendmsg: the errors of one batch must fit
// the receive buffer, and one request the send buffer.
const batchSize = 256

// sendBatch sends the n messages in c.w (sequence numbers first..first+n-1,
// only the last one asking for an ack; the kernel handles them in order during
// sendmsg) and reports each failed message's index and errno to onErr.
// Callers hold c.mu.
func (c *Conn) sendBatch(ctx context.Context, op string, first uint32, n int, onErr func(i int, errno syscall.Errno, ext string)) error {
	if err := c.send(c.w.b); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	last := first + uint32(n) - 1
	for {
		if err := ctx.Err(); err != nil {
			c.dirty = true
			return err
		}
		nr, err := c.read(0)
		if err != nil {
			c.dirty = true
			return fmt.Errorf("%s: receive: %w", op, err)
		}
		b := c.rbuf[:nr]
		done := false
		for len(b) >= nlmsgHdrLen {
			l := int(ne.Uint32(b))
			if l < nlmsgHdrLen || l > len(b) {
				c.dirty = true
				return fmt.Errorf("%s: %w: bad message length %d", op, ErrMalformed, l)
			}
			typ, flags, seq := ne.Uint16(b[4:]), ne.Uint16(b[6:]), ne.Uint32(b[8:])
			p := b[nlmsgHdrLen:l]
			al := min((l+3)&^3, len(b))
			b = b[al:]
			if typ != nlmsgError || seq-first >= uint32(n) {
				continue
			}
			errno, ext := parseNlErr(flags, p)
			if errno != 0 {
				onErr(int(seq-first), errno, ext)
			}
			if seq == last {
				done = true
			}
		}
		if done {
			return nil
		}
	}
}

// Create inserts entries into the table (for tests, benchmarks and the lab).
// Each entry needs both tuples and a timeout; a set Status must include
// StatusConfirmed or the kernel answers EBUSY. It returns how many were
// created and the first error.
func (c *Conn) Create(ctx context.Context, entries []Entry) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.prepare(); err != nil {
		return 0, err
	}
	created := 0
	var firstErr error
	for start := 0; start < len(entries); start += batchSize {
		chunk := entries[start:min(start+batchSize, len(entries))]
		c.w.reset()
		first := c.seq + 1
		for i := range chunk {
			e := &chunk[i]
			flags := uint16(nlmFRequest | nlmFCreate | nlmFExcl)
			if i == len(chunk)-1 {
				flags |= nlmFAck
			}
			c.w.begin(ctMsgNew, flags, c.nextSeq(), familyOf(e.Orig.Src), 0)
			c.w.tuple(ctaTupleOrig, &e.Orig, e.Proto)
			c.w.tuple(ctaTupleReply, &e.Reply, e.Proto)
			c.w.u32be(ctaTimeout, e.Timeout)
			if e.Status != 0 {
				c.w.u32be(ctaStatus, uint32(e.Status))
			}
			if e.Mark != 0 {
				c.w.u32be(ctaMark, e.Mark)
			}
			if e.Zone != 0 {
				c.w.u16be(ctaZone, e.Zone)
			}
			if e.Proto == ProtoTCP && e.HasTCPState {
				c.w.nest(ctaProtoinfo)
				c.w.nest(ctaProtoinfoTCP)
				c.w.u8(ctaProtoinfoTCPState, uint8(e.TCPState))
				c.w.endNest()
				c.w.endNest()
			}
			c.w.end()
		}
		failed := 0
		err := c.sendBatch(ctx, "create conntrack entries", first, len(chunk), func(i int, errno syscall.Errno, ext string) {
			failed++
			if firstErr == nil {
				firstErr = mapErrno(fmt.Sprintf("create %s", &chunk[i]), errno, ext)
			}
		})
		if err != nil {
			return created, err
		}
		created += len(chunk) - failed
	}
	return created, firstErr
}

func familyOf(a netip.Addr) uint8 {
	if a.Is4() {
		return FamilyIPv4
	}
	return FamilyIPv6
}

// victim is what a per-entry delete needs to name one entry.
type victim struct {
	orig  Tuple
	proto uint8
	zone  uint16
	id    uint32
}

// deleteEntries deletes entries one message each, in batches. Entries that
// are already gone (ENOENT) count as done. Callers hold c.mu.
func (c *Conn) deleteEntries(ctx context.Context, vs []victim) (int, error) {
	deleted := 0
	for start := 0; start < len(vs); start += batchSize {
		chunk := vs[start:min(start+batchSize, len(vs))]
		c.w.reset()
		first := c.seq + 1
		for i := range chunk {
			v := &chunk[i]
			flags := uint16(nlmFRequest)
			if i == len(chunk)-1 {
				flags |= nlmFAck
			}
			c.w.begin(ctMsgDelete, flags, c.nextSeq(), familyOf(v.orig.Src), 0)
			c.w.tuple(ctaTupleOrig, &v.orig, v.proto)
			if v.zone != 0 {
				c.w.u16be(ctaZone, v.zone)
			}
			if v.id != 0 {
				// The ID guards against deleting a new entry that reuses the tuple.
				c.w.u32be(ctaID, v.id)
			}
			c.w.end()
		}
		var firstErr error
		gone := 0
		err := c.sendBatch(ctx, "delete conntrack entries", first, len(chunk), func(i int, errno syscall.Errno, ext string) {
			if errno == unix.ENOENT {
				gone++ // expired or deleted meanwhile: the goal is met
				return
			}
			if firstErr == nil {
				firstErr = mapErrno("delete conntrack entry", errno, ext)
			}
		})
		if err != nil {
			return deleted, err
		}
		if firstErr != nil {
			return deleted, firstErr
		}
		deleted += len(chunk) - gone
	}
	return deleted, nil
}
