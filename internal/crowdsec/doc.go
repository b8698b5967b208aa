// Package crowdsec links ctguard to a CrowdSec Local API (LAPI), over plain
// net/http and encoding/json, in both directions:
//
//   - push (a watcher, like the crowdsec agent): ctguard's own bans become
//     alerts that carry one ban decision each (POST /v1/alerts, after a
//     login on POST /v1/watchers/login), so the other bouncers of the LAPI
//     apply them too. Push never blocks: alerts wait in a bounded queue
//     that is retried with backoff while the LAPI is down or slow, and the
//     oldest are dropped (and counted) when it is full.
//   - pull (a bouncer, like cs-firewall-bouncer): the LAPI's ban decisions
//     on addresses and ranges (GET /v1/decisions/stream with X-Api-Key)
//     become typed Decisions handed to an Applier, filtered by origin and
//     scenario and bounded in number and breadth. Ranges stay ranges, v4
//     and v6.
//
// A Client does both, as the Config asks; Status reads the state of the
// link at any time. Credentials never appear in logs, errors or a printed
// Config.
//
// docs/crowdsec.md describes the endpoints and fields used and how to
// register ctguard with cscli.
package crowdsec
