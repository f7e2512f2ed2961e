package kubenode

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Holder returns a *BusyError naming the node that holds the machine now,
// or nil when none does. It only looks: Start takes the lock for real, so a
// program can say before its slow preparations that the machine is taken.
func Holder() error {
	f, ok, err := tryLock()
	if err != nil || !ok {
		return err
	}
	f.Close()
	return nil
}

// SweepAfter removes what a node of owner left on this machine when the
// process that ran it was killed before Stop (its container shims and pods
// keep running, its mounts, links and iptables chains stay), as the next
// Start would. It does nothing, and says so with false, when the last node
// was not owner's or stopped cleanly, and returns a *BusyError while a node
// holds the machine.
func SweepAfter(owner string) (swept bool, err error) {
	if Unsupported() != "" {
		return false, nil
	}
	f, ok, err := tryLock()
	if err != nil || !ok {
		return false, err
	}
	defer f.Close()
	return sweepAfter(owner)
}

// sweepAfter is SweepAfter for a caller that holds the machine-wide lock.
func sweepAfter(owner string) (swept bool, err error) {
	rec, err := readRecord()
	if err != nil || rec == nil || rec.Owner != owner {
		return false, err
	}
	bins, err := findBinaries()
	if err != nil {
		return false, err
	}
	n := &Node{opts: Options{Owner: owner, Logf: func(string, ...any) {}}, toolsBin: bins.toolsBin}
	return true, n.sweepLeftovers()
}

// tryLock takes the machine-wide lock without waiting; ok is false, with a
// *BusyError, when a node holds it.
func tryLock() (_ *os.File, ok bool, _ error) {
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("cannot open the machine-wide node lock %s: %w", lockPath, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return nil, false, fmt.Errorf("cannot lock %s: %w", lockPath, err)
		}
		holder, _ := readRecord()
		if holder == nil {
			holder = &record{}
		}
		return nil, false, &BusyError{Owner: holder.Owner, PID: holder.PID}
	}
	return f, true, nil
}
