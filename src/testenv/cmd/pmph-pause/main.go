// Command pmph-pause is the pause (sandbox) container of the local node's
// pods: it holds the pod's namespaces by blocking until SIGTERM or SIGINT, as
// registry.k8s.io/pause does. src/testenv/images builds it into the image
// the node uses as its sandbox image.
package main

import (
	"context"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
}
