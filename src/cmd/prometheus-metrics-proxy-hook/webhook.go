package main

import (
	"context"
	"fmt"
	"io"
)

func runWebhook(_ context.Context, _ []string, _, stderr io.Writer) int {
	fmt.Fprintln(stderr, "The webhook subcommand is not built yet.")
	return 1
}
