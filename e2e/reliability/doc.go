// Package reliability holds the fault-injection and hardening tests: real
// webhook processes (src/testenv/webhooktest) on three real Redis nodes
// (src/testenv/redistest), one of them behind a TCP proxy that adds latency and
// drops connections (src/testenv/faultproxy), driven through the real HTTPS
// endpoints by many concurrent clients while nodes are killed, paused and
// slowed, webhook processes are killed and sidecars vanish without
// releasing. Everything runs on loopback and is bounded in time.
//
// What the tests assert, and the figures they print, are described in
// docs/reliability.md. The load test runs one round of the fault schedule
// (about a minute) by default; PMPH_RELIABILITY_ROUNDS=n runs n rounds
// (make reliability-long). `go test -short` skips the load test.
//
// Subpackages hold the parts that do not need processes and are tested on
// their own: the holder interval checker (holders), the figures book
// (figures) and the /proc socket accounting (sockets).
package reliability
