package kubenode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Machine-wide paths: iptables, the kubelet's cgroups and the CNI state belong
// to the whole host, so one node runs per machine and these paths are fixed.
const (
	lockPath   = "/run/pmph-kubenode.lock"
	recordPath = "/run/pmph-kubenode.json"
	// lockPoll is how often a waiting Start tries the lock again.
	lockPoll = 500 * time.Millisecond
)

// record says who runs the node now, and where, so that the next Start can
// name the holder and sweep what a crashed run left behind.
type record struct {
	Owner string `json:"owner"`
	PID   int    `json:"pid"`
	Dir   string `json:"dir"`
	// IPForward is the value of net.ipv4.ip_forward before the node set it.
	IPForward string `json:"ipForward"`
}

func readRecord() (*record, error) {
	data, err := os.ReadFile(recordPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", recordPath, err)
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		// A run that crashed while writing leaves a torn record; the sweep
		// still finds its leftovers by their marker and path prefix.
		return &record{}, nil
	}
	return &r, nil
}

func writeRecord(r *record) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := recordPath + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("cannot write %s: %w", tmp, err)
	}
	return os.Rename(tmp, recordPath)
}

// BusyError says that another node holds the machine.
type BusyError struct {
	Owner string
	PID   int
}

func (e *BusyError) Error() string {
	if e.Owner == DemoOwner {
		return fmt.Sprintf("the node of `make demo` (pid %d) is running on this machine, and only one node can run at a time; stop it with `make demo-down` and run the tests again", e.PID)
	}
	return fmt.Sprintf("another node (%s, pid %d) is running on this machine, and only one node can run at a time", e.Owner, e.PID)
}

// acquireLock takes the machine-wide lock. A node of another test is waited
// for (test packages run one after another); the demo's node is not, since it
// runs until `make demo-down`.
func acquireLock(ctx context.Context, owner string, logf func(string, ...any)) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(lockPath), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cannot open the machine-wide node lock %s: %w", lockPath, err)
	}
	logged := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("cannot lock %s: %w", lockPath, err)
		}
		holder, _ := readRecord()
		if holder != nil && (holder.Owner == DemoOwner || owner == DemoOwner) {
			f.Close()
			return nil, &BusyError{Owner: holder.Owner, PID: holder.PID}
		}
		if !logged && holder != nil {
			logf("waiting for the node of %s (pid %d) to stop", holder.Owner, holder.PID)
			logged = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			if holder != nil {
				return nil, fmt.Errorf("gave up waiting for the node of %s (pid %d): %w", holder.Owner, holder.PID, context.Cause(ctx))
			}
			return nil, fmt.Errorf("gave up waiting for the lock %s: %w", lockPath, context.Cause(ctx))
		case <-time.After(lockPoll):
		}
	}
}
