// Command countingapp is the final-scrape tests' app as a binary of its
// own, for a container on a real node; see package countingapp.
package main

import (
	"os"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/countingapp"
)

func main() { os.Exit(countingapp.Main(os.Stdout, os.Stderr)) }
