package main

import (
	"context"
	"fmt"
	"io"
)

func runSidecar(_ context.Context, _ []string, _, stderr io.Writer) int {
	fmt.Fprintln(stderr, "The sidecar subcommand is not built yet.")
	return 1
}
