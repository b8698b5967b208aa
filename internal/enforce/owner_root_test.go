package enforce

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// Another tool's table of ctguard's name is refused, never destroyed;
// ctguard's own table carries a mark that nft shows.
func TestRootForeignTableIsNotDestroyed(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	if out := l.vic.MustRun(t, "nft", "list", "chain", "inet", "ctguard", "prerouting"); !strings.Contains(out, `comment "`+OwnerMark+`"`) {
		t.Fatalf("no ownership mark in ctguard's chain:\n%s", out)
	}
	l.vic.Script(t, `nft delete table inet ctguard
nft add table inet ctguard
nft add set inet ctguard friends '{ type ipv4_addr; }'
nft add chain inet ctguard mine '{ type filter hook input priority 0; }'
nft add rule inet ctguard mine ip saddr @friends accept`)
	before := l.vic.MustRun(t, "nft", "list", "table", "inet", "ctguard")
	e2 := New(Config{Store: l.st, Firewall: l.fw, Purger: l.ct, Allow: l.eng.allowC})
	_, err := e2.Start(ctx)
	if !errors.Is(err, ErrForeignTable) || !strings.Contains(err.Error(), "mine") || !strings.Contains(err.Error(), "friends") {
		t.Fatalf("start over a foreign table: %v", err)
	}
	if after := l.vic.MustRun(t, "nft", "list", "table", "inet", "ctguard"); after != before {
		t.Fatalf("the foreign table changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// An empty table of the name (a ruleset reload that left it empty) is
	// taken over.
	l.vic.Script(t, "nft delete table inet ctguard\nnft add table inet ctguard")
	if _, err := e2.Start(ctx); err != nil {
		t.Fatalf("start over an empty table: %v", err)
	}
}
