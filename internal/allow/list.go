package allow

import "slices"

// NewList wraps entries that were gathered elsewhere (for example by the
// daemon, sent over its control socket) in a List.
func NewList(entries []Entry) *List { return &List{entries: slices.Clone(entries)} }
