// Package startuppages unmaps the executable's read-only pages a process
// touched while it started, so that its resident set shows what it uses
// while it runs.
//
// At start-up the Go runtime and every linked package's init touch code and
// read-only data all over the binary, and the kernel maps each touched page
// with its neighbours (fault-around): an idle process keeps most of the file
// resident although it runs a small part of it (docs/performance.md,
// "Sidecar RSS", has the figures). Those pages are clean and backed by the
// file (RssFile): MADV_DONTNEED only removes them from this process' page
// tables; the page cache keeps them for every other process of the same
// image, and a page the process needs again is mapped back on its next
// access. Writable mappings (data, heap, stacks) are never touched:
// MADV_DONTNEED would discard their contents.
package startuppages

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Mapping is one read-only mapping of the executable.
type Mapping struct {
	Start, End uintptr
	Perms      string
}

// Drop unmaps the resident pages of the executable's read-only mappings
// from this process and answers what it dropped.
func Drop() ([]Mapping, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return nil, fmt.Errorf("finding the executable: %w", err)
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil, fmt.Errorf("reading the mappings: %w", err)
	}
	defer f.Close()
	maps, err := ReadOnlyMappings(f, exe)
	if err != nil {
		return nil, err
	}
	for _, m := range maps {
		if err := dontNeed(m.Start, m.End-m.Start); err != nil {
			return nil, fmt.Errorf("dropping %x-%x: %w", m.Start, m.End, err)
		}
	}
	return maps, nil
}

// ReadOnlyMappings parses /proc/self/maps and answers the mappings of the
// file path that are neither writable nor shared.
func ReadOnlyMappings(r io.Reader, path string) ([]Mapping, error) {
	var out []Mapping
	s := bufio.NewScanner(r)
	for s.Scan() {
		// address perms offset dev inode pathname
		f := strings.Fields(s.Text())
		if len(f) < 6 || strings.Join(f[5:], " ") != path {
			continue
		}
		perms := f[1]
		if len(perms) < 4 || perms[1] == 'w' || perms[3] != 'p' {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			return nil, fmt.Errorf("malformed mapping %q", s.Text())
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			return nil, fmt.Errorf("malformed mapping %q", s.Text())
		}
		out = append(out, Mapping{Start: uintptr(start), End: uintptr(end), Perms: perms})
	}
	return out, s.Err()
}

// StartUpTime is how long after the process starts its start-up is over:
// flags read, listeners open, the webhook's certificates and Redis checked,
// the sidecar's lease renewed once.
const StartUpTime = 2 * time.Second

// DropAfterStartUp drops the pages, and logs what it dropped, once
// StartUpTime has passed; stop cancels that if it has not happened yet.
func DropAfterStartUp(logger zerolog.Logger) (stop func() bool) {
	t := time.AfterFunc(StartUpTime, func() {
		maps, err := Drop()
		Log(logger, "start-up", maps, err)
	})
	return t.Stop
}

// Log writes what Drop did at stage as one debug event.
func Log(logger zerolog.Logger, stage string, maps []Mapping, err error) {
	if err != nil {
		logger.Debug().Err(err).Str("stage", stage).Msg("The binary's pages could not be dropped from the resident set.")
		return
	}
	var size uintptr
	for _, m := range maps {
		size += m.End - m.Start
	}
	logger.Debug().Str("stage", stage).Uint64("mapped_kib", uint64(size>>10)).Msg("Dropped the binary's pages from the resident set.")
}
