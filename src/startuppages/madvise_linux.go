package startuppages

import "golang.org/x/sys/unix"

// dontNeed calls madvise on an address range of the executable's mapping,
// which is not Go memory: hence the raw system call rather than a slice.
func dontNeed(start, length uintptr) error {
	if _, _, errno := unix.Syscall(unix.SYS_MADVISE, start, length, unix.MADV_DONTNEED); errno != 0 {
		return errno
	}
	return nil
}
