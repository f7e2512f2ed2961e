//go:build race

package reliability

// raceEnabled says, in the figures, that the processes ran with the race
// detector (webhooktest builds the webhook with -race when the tests use it).
const raceEnabled = true
