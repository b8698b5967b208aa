// Package store keeps ctguard's bans and runtime allowlist entries in an
// embedded bbolt database, so that bans survive restarts and can be restored
// in one batch.
//
// It is a plain record keeper: it never touches the kernel, and it decides
// nothing (the enforce package does). Only one process may hold the database
// at a time; a second one gets ErrLocked quickly instead of hanging.
package store

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// DefaultDir is where the database lives unless --state-dir or
// CTGUARD_STATE_DIR say otherwise.
const DefaultDir = "/var/lib/ctguard"

// FileName is the database file inside the state directory.
const FileName = "ctguard.db"

var (
	bucketBans  = []byte("bans")
	bucketAllow = []byte("allow")
	bucketMeta  = []byte("meta")
	// bucketIndex maps every ban record's prefix to when it stops (8 bytes,
	// Unix nanoseconds, big endian: the expiry, or the end if lifted early)
	// and a state byte (0 in force until then, 1 ended), so that restoring
	// 100k bans, the overlap checks of a ban and pruning do not decode the
	// full records.
	bucketIndex = []byte("idx")
	// bucketOldIndex is the first index format (no state byte); dropped at open.
	bucketOldIndex = []byte("index")
)

const schemaVersion = "1"

// ErrLocked means another process (normally the running daemon) holds the
// database. Callers should talk to that process instead.
var ErrLocked = errors.New("store is locked by a running ctguard")

// ErrDamaged means the database file cannot be read: it was truncated,
// overwritten or is not a ctguard store. The daemon moves such a file aside
// (MoveAside) and starts a new one; commands report it.
var ErrDamaged = errors.New("store file is damaged")

// ErrNotFound is returned for a prefix that has no record.
var ErrNotFound = errors.New("not found")

// Ban is one ban record. A single address is stored as a /32 or /128 prefix.
// Records outlive their expiry (for history and repeat-offender counts) until
// Prune removes them.
type Ban struct {
	Prefix   netip.Prefix `json:"prefix"`
	Reason   string       `json:"reason,omitempty"`
	Evidence string       `json:"evidence,omitempty"` // free text or JSON from the policy
	First    time.Time    `json:"first"`              // first time this prefix was banned
	Last     time.Time    `json:"last"`               // latest (re-)ban
	Count    int          `json:"count"`              // how many times banned
	Expires  time.Time    `json:"expires"`
	// Ended is set when the ban was lifted before its expiry (unban, or
	// replaced by an enclosing prefix ban); EndReason says which.
	Ended     time.Time `json:"ended,omitzero"`
	EndReason string    `json:"end_reason,omitempty"`
	// Scoped bans leave the SSH ports open: the target covered the peer of
	// an open SSH session when it was banned.
	Scoped bool `json:"scoped,omitempty"`
	// Outcome of the last ban: entries purged and entries still counted after.
	Purged    int    `json:"purged"`
	Remaining int    `json:"remaining"`
	PurgeErr  string `json:"purge_error,omitempty"`
	// SocketsClosed is how many of the host's TCP sockets held by the
	// banned peers the last ban closed (CloseErr: why some could not be).
	SocketsClosed int    `json:"sockets_closed"`
	CloseErr      string `json:"close_error,omitempty"`
	// PurgedTotal and SocketsClosedTotal add up every ban of this record.
	PurgedTotal        int `json:"purged_total"`
	SocketsClosedTotal int `json:"sockets_closed_total"`
	// Origin is who decided the latest ban: OriginAuto (the daemon's
	// policy), OriginManual (an operator) or OriginAdopted (found in the
	// kernel without a record).
	Origin string `json:"origin,omitempty"`
}

// Origins of a ban.
const (
	OriginAuto   = "auto"
	OriginManual = "manual"
	// OriginCrowdSec: a ban decision pulled from CrowdSec's Local API.
	OriginCrowdSec = "crowdsec"
	OriginAdopted  = "adopted"
)

// Active reports whether the ban is in force at now.
func (b Ban) Active(now time.Time) bool {
	return b.Ended.IsZero() && b.Expires.After(now)
}

// Allow is a runtime allowlist entry (added by `ctguard allow`). A zero
// Expires means it never expires.
type Allow struct {
	Prefix  netip.Prefix `json:"prefix"`
	Note    string       `json:"note,omitempty"`
	Added   time.Time    `json:"added"`
	Expires time.Time    `json:"expires,omitzero"`
}

// Active reports whether the entry applies at now.
func (a Allow) Active(now time.Time) bool {
	return a.Expires.IsZero() || a.Expires.After(now)
}

// Store is an open database. Methods are safe for concurrent use.
type Store struct {
	db      *bolt.DB
	path    string
	pidPath string

	// active caches the index entries in force at activeAt, so that the
	// per-cycle reads cost the active bans, not the history. Any write
	// drops it; time only removes entries from it.
	mu       sync.Mutex
	active   []Active
	activeAt time.Time
	cached   bool
	gen      uint64 // writes so far: a read that overlapped one is not cached
}

// Options tunes Open.
type Options struct {
	// LockTimeout is how long to wait for another process to release the
	// database (default 500 ms).
	LockTimeout time.Duration
	// NoSync skips fsync per commit; only for benchmarks and tests.
	NoSync bool
}

// Dir resolves the state directory: flag value, then CTGUARD_STATE_DIR, then
// DefaultDir.
func Dir(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if v := os.Getenv("CTGUARD_STATE_DIR"); v != "" {
		return v
	}
	return DefaultDir
}

// Open opens (creating if needed) the database in dir.
func Open(dir string, opt Options) (*Store, error) {
	if opt.LockTimeout <= 0 {
		opt.LockTimeout = 500 * time.Millisecond
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	path := filepath.Join(dir, FileName)
	pidPath := path + ".pid"
	var db *bolt.DB
	err := guarded(func() (err error) {
		db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: opt.LockTimeout, NoSync: opt.NoSync})
		return err
	})
	if formatError(err) {
		err = fmt.Errorf("%w: %w", ErrDamaged, err)
	}
	if errors.Is(err, bolt.ErrTimeout) {
		who := ""
		if b, rerr := os.ReadFile(pidPath); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				who = fmt.Sprintf(" (pid %d)", pid)
			}
		}
		return nil, fmt.Errorf("open store %s: %w%s", path, ErrLocked, who)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	st := &Store{db: db, path: path, pidPath: pidPath}
	// Read every record once: a damaged page must show up here, as an
	// error, not later as a panic in the middle of a ban.
	if err := st.verify(); err != nil {
		_ = guarded(db.Close)
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	err = st.update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketBans, bucketAllow, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if tx.Bucket(bucketOldIndex) != nil {
			if err := tx.DeleteBucket(bucketOldIndex); err != nil {
				return err
			}
		}
		if tx.Bucket(bucketIndex) == nil {
			if err := rebuildIndex(tx); err != nil {
				return fmt.Errorf("build index: %w", err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get([]byte("schema")); v != nil && string(v) != schemaVersion {
			return fmt.Errorf("schema version %q, this ctguard understands %q", v, schemaVersion)
		}
		return meta.Put([]byte("schema"), []byte(schemaVersion))
	})
	if err != nil {
		_ = guarded(db.Close)
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// The pid file only serves the "locked by pid N" message; the flock is
	// the real lock, so a failure here is not fatal.
	_ = os.WriteFile(pidPath, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
	return st, nil
}

// formatError tells bbolt's complaints about the file's content (bad
// magic, checksum, version, "file size too small") from failures to open
// or lock it (permissions, a full disk, another process).
func formatError(err error) bool {
	if err == nil || errors.Is(err, ErrDamaged) || errors.Is(err, berrors.ErrTimeout) {
		return false
	}
	var pe *fs.PathError
	var errno syscall.Errno
	return !errors.As(err, &pe) && !errors.As(err, &errno)
}

// guarded runs fn, turning a panic (bbolt panics on some damaged pages) or
// a memory fault (a truncated memory-mapped file) into ErrDamaged.
func guarded(fn func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", ErrDamaged, r)
		}
	}()
	return fn()
}

// view and update are bbolt's, guarded: bbolt rolls the transaction back
// when fn panics, so the store stays usable for the caller's error path.
func (s *Store) view(fn func(*bolt.Tx) error) error {
	return guarded(func() error { return s.db.View(fn) })
}

func (s *Store) update(fn func(*bolt.Tx) error) error {
	err := guarded(func() error { return s.db.Update(fn) })
	s.mu.Lock()
	s.gen++
	s.cached, s.active = false, nil
	s.mu.Unlock()
	return err
}

// verify walks every page and key of the database once: a damaged page
// must show up here, as an error, not later as a panic in the middle of a
// ban. Records are not decoded (that would triple the cost of opening
// 100,000 bans: 34 ms instead of 557 ms here); a ban record that does not
// decode is an error where it is read (list, why), while the start, the
// cycles and the bans use the index only.
func (s *Store) verify() error {
	return s.view(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				var err error
				switch string(name) {
				case string(bucketIndex):
					if len(v) != indexLen {
						err = errors.New("bad index value")
					}
				case string(bucketAllow):
					// Few, and every ban reads them: decoded here.
					err = json.Unmarshal(v, new(Allow))
				}
				if err != nil {
					return fmt.Errorf("%w: bucket %s, key %q: %w", ErrDamaged, name, k, err)
				}
				return nil
			})
		})
	})
}

// MoveAside renames a damaged database file in dir to
// ctguard.db.damaged-TIME (UTC) and returns the new path, so that a new
// store can start while the old file stays for inspection.
func MoveAside(dir string, now time.Time) (string, error) {
	from := filepath.Join(dir, FileName)
	to := from + ".damaged-" + now.UTC().Format("20060102T150405Z")
	if err := os.Rename(from, to); err != nil {
		return "", fmt.Errorf("move damaged store aside: %w", err)
	}
	return to, nil
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Close releases the database and its lock.
func (s *Store) Close() error {
	_ = os.Remove(s.pidPath)
	return s.db.Close()
}

func key(p netip.Prefix) []byte { return []byte(p.Masked().String()) }

// BanRequest describes a (re-)ban to record.
type BanRequest struct {
	Prefix   netip.Prefix
	Reason   string
	Evidence string
	TTL      time.Duration
	Now      time.Time
	Scoped   bool   // leave the SSH ports open
	Origin   string // OriginAuto when empty
}

// RecordBan creates or refreshes the record for r.Prefix: the count goes up,
// First is kept, Last and Expires move, an earlier end is cleared.
func (s *Store) RecordBan(r BanRequest) (Ban, error) {
	out, err := s.RecordBans([]BanRequest{r})
	if err != nil {
		return Ban{}, err
	}
	return out[0], nil
}

// RecordBans is RecordBan for many requests in one transaction (one fsync).
func (s *Store) RecordBans(rs []BanRequest) ([]Ban, error) {
	out := make([]Ban, len(rs))
	err := s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBans)
		for _, i := range keyOrder(len(rs), func(i int) netip.Prefix { return rs[i].Prefix }) {
			r := rs[i]
			var rec Ban
			if v := b.Get(key(r.Prefix)); v != nil {
				if err := json.Unmarshal(v, &rec); err != nil {
					return fmt.Errorf("decode %s: %w", r.Prefix, err)
				}
			} else {
				rec = Ban{Prefix: r.Prefix.Masked(), First: r.Now}
			}
			rec.Count++
			rec.Last = r.Now
			rec.Expires = r.Now.Add(r.TTL)
			rec.Reason = r.Reason
			rec.Evidence = r.Evidence
			rec.Scoped = r.Scoped
			rec.Origin = cmp.Or(r.Origin, OriginAuto)
			rec.Ended, rec.EndReason = time.Time{}, ""
			rec.Purged, rec.Remaining, rec.PurgeErr = 0, 0, ""
			rec.SocketsClosed, rec.CloseErr = 0, ""
			if err := putBan(tx, rec); err != nil {
				return err
			}
			out[i] = rec
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("record %d bans: %w", len(rs), err)
	}
	return out, nil
}

// PutBans writes records as they are, in one transaction (bulk import,
// benchmarks, tests).
func (s *Store) PutBans(bans []Ban) error {
	return s.update(func(tx *bolt.Tx) error {
		for _, i := range keyOrder(len(bans), func(i int) netip.Prefix { return bans[i].Prefix }) {
			if err := putBan(tx, bans[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// UpdateBan applies fn to the record of p and stores the result.
func (s *Store) UpdateBan(p netip.Prefix, fn func(*Ban)) (Ban, error) {
	out, err := s.UpdateBans([]netip.Prefix{p}, func(_ int, b *Ban) { fn(b) })
	if err != nil {
		return Ban{}, err
	}
	return out[0], nil
}

// UpdateBans applies fn to the record of each prefix (fn gets the index in
// ps) in one transaction. A missing record fails the whole update.
func (s *Store) UpdateBans(ps []netip.Prefix, fn func(int, *Ban)) ([]Ban, error) {
	out := make([]Ban, len(ps))
	err := s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBans)
		for _, i := range keyOrder(len(ps), func(i int) netip.Prefix { return ps[i] }) {
			p := ps[i]
			v := b.Get(key(p))
			if v == nil {
				return fmt.Errorf("%s: %w", p, ErrNotFound)
			}
			if err := json.Unmarshal(v, &out[i]); err != nil {
				return fmt.Errorf("decode %s: %w", p, err)
			}
			fn(i, &out[i])
			if err := putBan(tx, out[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("update bans: %w", err)
	}
	return out, nil
}

// EndBan marks the ban of p as lifted at now, for reason.
func (s *Store) EndBan(p netip.Prefix, now time.Time, reason string) (Ban, error) {
	return s.UpdateBan(p, func(b *Ban) { b.Ended, b.EndReason = now, reason })
}

// GetBan returns the record for p.
func (s *Store) GetBan(p netip.Prefix) (Ban, error) {
	var out Ban
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketBans).Get(key(p))
		if v == nil {
			return ErrNotFound
		}
		return json.Unmarshal(v, &out)
	})
	if err != nil {
		return Ban{}, fmt.Errorf("get ban %s: %w", p, err)
	}
	return out, nil
}

// Bans returns all records (active or not) sorted by prefix.
func (s *Store) Bans() ([]Ban, error) {
	var out []Ban
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBans).ForEach(func(k, v []byte) error {
			var rec Ban
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode %s: %w", k, err)
			}
			out = append(out, rec)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list bans: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return lessPrefix(out[i].Prefix, out[j].Prefix) })
	return out, nil
}

// ActiveBans returns the records in force at now.
func (s *Store) ActiveBans(now time.Time) ([]Ban, error) {
	all, err := s.Bans()
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, b := range all {
		if b.Active(now) {
			out = append(out, b)
		}
	}
	return out, nil
}

// Prune deletes ban records that ended or expired before cutoff, and
// expired allow entries, and returns how many ban records it removed.
func (s *Store) Prune(cutoff time.Time) (int, error) {
	n := 0
	err := s.update(func(tx *bolt.Tx) error {
		b, idx := tx.Bucket(bucketBans), tx.Bucket(bucketIndex)
		var dead [][]byte
		cut := uint64(cutoff.UnixNano())
		if err := idx.ForEach(func(k, v []byte) error {
			if len(v) != indexLen {
				return fmt.Errorf("index %s: bad value", k)
			}
			if binary.BigEndian.Uint64(v) < cut {
				dead = append(dead, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
			if err := idx.Delete(k); err != nil {
				return err
			}
		}
		n = len(dead)
		a := tx.Bucket(bucketAllow)
		dead = dead[:0]
		if err := a.ForEach(func(k, v []byte) error {
			var rec Allow
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode %s: %w", k, err)
			}
			if !rec.Expires.IsZero() && rec.Expires.Before(cutoff) {
				dead = append(dead, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range dead {
			if err := a.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune: %w", err)
	}
	return n, nil
}

// PutAllow creates or replaces a runtime allowlist entry.
func (s *Store) PutAllow(a Allow) error {
	a.Prefix = a.Prefix.Masked()
	err := s.update(func(tx *bolt.Tx) error { return put(tx.Bucket(bucketAllow), a.Prefix, a) })
	if err != nil {
		return fmt.Errorf("allow %s: %w", a.Prefix, err)
	}
	return nil
}

// DeleteAllow removes a runtime allowlist entry.
func (s *Store) DeleteAllow(p netip.Prefix) error {
	err := s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAllow)
		if b.Get(key(p)) == nil {
			return ErrNotFound
		}
		return b.Delete(key(p))
	})
	if err != nil {
		return fmt.Errorf("remove allow %s: %w", p, err)
	}
	return nil
}

// Allows returns the runtime allowlist entries active at now.
func (s *Store) Allows(now time.Time) ([]Allow, error) {
	var out []Allow
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAllow).ForEach(func(k, v []byte) error {
			var rec Allow
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode %s: %w", k, err)
			}
			if rec.Active(now) {
				out = append(out, rec)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list allow: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return lessPrefix(out[i].Prefix, out[j].Prefix) })
	return out, nil
}

// keyOrder returns the indices 0..n-1 sorted by the database key of each
// prefix. Large batches must be written in key order: bbolt inserts into
// one in-memory node per transaction, and out-of-order inserts into a node
// of 100k keys cost a memmove each (11 s instead of well under one).
func keyOrder(n int, prefix func(int) netip.Prefix) []int {
	keys := make([]string, n)
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
		keys[i] = string(key(prefix(i)))
	}
	sort.Slice(idx, func(a, b int) bool { return keys[idx[a]] < keys[idx[b]] })
	return idx
}

// putBan writes a ban record and keeps the index in step.
func putBan(tx *bolt.Tx, rec Ban) error {
	if err := put(tx.Bucket(bucketBans), rec.Prefix, rec); err != nil {
		return err
	}
	var v [indexLen]byte
	until := rec.Expires
	if rec.Scoped {
		v[8] |= indexScoped
	}
	if rec.Origin == OriginManual || rec.Origin == OriginCrowdSec {
		v[8] |= indexManual // not the policy's: never evidence against neighbours
	}
	if !rec.Ended.IsZero() {
		v[8] |= indexEnded
		if rec.Ended.Before(until) {
			until = rec.Ended
		}
	}
	binary.BigEndian.PutUint64(v[:], uint64(until.UnixNano()))
	return tx.Bucket(bucketIndex).Put(key(rec.Prefix), v[:])
}

const indexLen = 9

// Flags in the index's state byte.
const (
	indexEnded  = 1 << 0 // lifted before its expiry
	indexScoped = 1 << 1 // leaves the SSH ports open
	indexManual = 1 << 2 // an operator's ban
)

func rebuildIndex(tx *bolt.Tx) error {
	if _, err := tx.CreateBucket(bucketIndex); err != nil {
		return err
	}
	return tx.Bucket(bucketBans).ForEach(func(k, v []byte) error {
		var rec Ban
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("decode %s: %w", k, err)
		}
		return putBan(tx, rec)
	})
}

// Active is the index view of a ban in force: enough to restore it or to
// check overlaps.
type Active struct {
	Prefix  netip.Prefix
	Expires time.Time
	Scoped  bool // leaves the SSH ports open
	Manual  bool // an operator's or a pulled ban: never counted toward automatic prefix bans
}

// ActiveIndex returns the bans in force at now from the index, without
// decoding the full records, in key order.
func (s *Store) ActiveIndex(now time.Time) ([]Active, error) {
	s.mu.Lock()
	if s.cached && !now.Before(s.activeAt) {
		out := make([]Active, 0, len(s.active))
		for _, a := range s.active {
			if a.Expires.After(now) {
				out = append(out, a)
			}
		}
		s.mu.Unlock()
		return out, nil
	}
	gen := s.gen
	s.mu.Unlock()
	out, err := s.readActive(now)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.gen == gen {
		s.active, s.activeAt, s.cached = slices.Clone(out), now, true
	}
	s.mu.Unlock()
	return out, nil
}

// readActive walks the index.
func (s *Store) readActive(now time.Time) ([]Active, error) {
	var out []Active
	nowNs := uint64(now.UnixNano())
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketIndex).ForEach(func(k, v []byte) error {
			if len(v) != indexLen {
				return fmt.Errorf("index %s: bad value", k)
			}
			exp := binary.BigEndian.Uint64(v)
			if exp <= nowNs || v[8]&indexEnded != 0 {
				return nil
			}
			p, err := netip.ParsePrefix(string(k))
			if err != nil {
				return fmt.Errorf("index key %q: %w", k, err)
			}
			out = append(out, Active{Prefix: p, Expires: time.Unix(0, int64(exp)), Scoped: v[8]&indexScoped != 0, Manual: v[8]&indexManual != 0})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read ban index: %w", err)
	}
	return out, nil
}

func put(b *bolt.Bucket, p netip.Prefix, v any) error {
	buf, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key(p), buf)
}

func lessPrefix(a, b netip.Prefix) bool {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c < 0
	}
	return a.Bits() < b.Bits()
}

// SetMeta stores a small value under key (e.g. the kernel table identity
// the last Setup produced, so a later process can tell a replaced table).
func (s *Store) SetMeta(key, value string) error {
	err := s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put([]byte("x:"+key), []byte(value))
	})
	if err != nil {
		return fmt.Errorf("set meta %s: %w", key, err)
	}
	return nil
}

// Meta returns the value stored by SetMeta, or "".
func (s *Store) Meta(key string) (string, error) {
	var v string
	err := s.view(func(tx *bolt.Tx) error {
		v = string(tx.Bucket(bucketMeta).Get([]byte("x:" + key)))
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("get meta %s: %w", key, err)
	}
	return v, nil
}
