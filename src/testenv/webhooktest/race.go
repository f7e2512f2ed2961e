//go:build race

package webhooktest

// raceEnabled builds the webhook with the race detector when the tests run
// with it, so that the process is checked too.
const raceEnabled = true
