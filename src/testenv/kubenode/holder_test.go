package kubenode

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestHolderAndSweepAfter checks what the demo relies on: Holder names the
// node that holds the machine, SweepAfter refuses while one does, leaves
// another owner's record alone, and removes what a killed node of its owner
// left (its working directory and record).
func TestHolderAndSweepAfter(t *testing.T) {
	if reason := Unsupported(); reason != "" {
		t.Skip("kubenode: " + reason)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Minute)
	defer cancel()
	// Also waits for any node another test package runs.
	held, err := acquireLock(ctx, "test "+t.Name(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeRecord(&record{Owner: "test holder", PID: os.Getpid()}); err != nil {
		held.Close()
		t.Fatal(err)
	}
	var busy *BusyError
	if err := Holder(); !errors.As(err, &busy) || busy.Owner != "test holder" || busy.PID != os.Getpid() {
		t.Errorf("Holder while the lock is held = %v, want a BusyError naming test holder and pid %d", err, os.Getpid())
	}
	if swept, err := SweepAfter("test holder"); swept || !errors.As(err, &busy) {
		t.Errorf("SweepAfter while the lock is held = %v, %v; want false and a BusyError", swept, err)
	}
	// The rest runs under the lock, as SweepAfter does once it took it:
	// no other test's node may start meanwhile and find these records.
	defer func() {
		os.Remove(recordPath)
		held.Close()
	}()
	if swept, err := sweepAfter("test someone else"); swept || err != nil {
		t.Errorf("SweepAfter of another owner = %v, %v; want false, nil", swept, err)
	}
	if r, _ := readRecord(); r == nil || r.Owner != "test holder" {
		t.Errorf("SweepAfter of another owner changed the record to %+v", r)
	}

	dir := filepath.Join(t.TempDir(), dirPrefix+"killed")
	if err := os.MkdirAll(filepath.Join(dir, "kubelet"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeRecord(&record{Owner: "test killed", PID: 1, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	swept, err := sweepAfter("test killed")
	if !swept || err != nil {
		t.Errorf("SweepAfter of the killed node's owner = %v, %v; want true, nil", swept, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("SweepAfter left the killed node's directory %s (%v)", dir, err)
	}
	if r, err := readRecord(); r != nil || err != nil {
		t.Errorf("SweepAfter left the record %+v (%v)", r, err)
	}
}
