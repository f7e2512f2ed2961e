//go:build race

package main

// raceEnabled builds the demo with the race detector when its test has it.
const raceEnabled = true
