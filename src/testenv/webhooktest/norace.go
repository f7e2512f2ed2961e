//go:build !race

package webhooktest

const raceEnabled = false
