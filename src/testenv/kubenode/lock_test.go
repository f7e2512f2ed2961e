package kubenode

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// TestDemoNodeRefusesTests holds the machine-wide lock as the demo would and
// checks that a test's Start refuses at once, naming the demo and how to stop
// it, while a second test waits for the lock instead.
func TestDemoNodeRefusesTests(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skipf("the machine-wide lock lives in /run, which needs root; this runs as uid %d", os.Geteuid())
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	// Taking the lock first also waits for any node another test package runs.
	held, err := acquireLock(ctx, "test "+t.Name(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := writeRecord(&record{Owner: DemoOwner, PID: os.Getpid()}); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(recordPath)

	_, err = acquireLock(ctx, "test other", t.Logf)
	var busy *BusyError
	if !errors.As(err, &busy) {
		t.Fatalf("acquireLock while the demo holds the node = %v, want a BusyError", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "make demo") || !strings.Contains(msg, "make demo-down") {
		t.Errorf("the refusal %q does not name the demo and `make demo-down`", msg)
	}

	if err := writeRecord(&record{Owner: "test first", PID: os.Getpid()}); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, time.Second)
	defer cancelShort()
	_, err = acquireLock(short, "test second", t.Logf)
	if err == nil || errors.As(err, &busy) || !strings.Contains(err.Error(), "gave up waiting for the node of test first") {
		t.Errorf("acquireLock while another test holds the node = %v, want it to wait until its context ends", err)
	}
}
