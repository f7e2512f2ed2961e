package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// machine describes where the figures were taken.
type machine struct {
	cpu, kernel, goVersion, redis string
	cores                         int
	memGiB                        float64
	loadStart, loadEnd            string
	fsyncP50, fsyncP99            time.Duration
	// quorumP50 and quorumP99 are when the second of three concurrent
	// appends + fdatasync (one per file, as three Redis nodes on this one
	// disk do) completes: what an acquisition's quorum waits for here.
	quorumP50, quorumP99 time.Duration
	fsyncFS              string
}

func describeMachine() machine {
	m := machine{cores: runtime.NumCPU(), goVersion: runtime.Version()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			var kib float64
			if n, _ := fmt.Sscanf(s.Text(), "MemTotal: %f kB", &kib); n == 1 {
				m.memGiB = kib / (1 << 20)
			}
		}
		f.Close()
	}
	if out, err := exec.Command("redis-server", "--version").Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if v, ok := strings.CutPrefix(f, "v="); ok {
				m.redis = v
			}
		}
	}
	m.loadStart = loadAvg()
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " / ")
}

// probeFsync measures what appendfsync always waits for: a small append
// and fdatasync, in the directory Redis writes to.
func (m *machine) probeFsync(dir string, d time.Duration) error {
	f, err := os.CreateTemp(dir, "fsync-probe-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) == nil {
		m.fsyncFS = fsName(st.Type)
	}
	buf := make([]byte, 256)
	var lat []time.Duration
	for end := time.Now().Add(d); time.Now().Before(end); {
		began := time.Now()
		if _, err := f.Write(buf); err != nil {
			return err
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return err
		}
		lat = append(lat, time.Since(began))
	}
	slices.Sort(lat)
	m.fsyncP50 = lat[len(lat)/2]
	m.fsyncP99 = lat[len(lat)*99/100]

	files := make([]*os.File, 3)
	for i := range files {
		if files[i], err = os.CreateTemp(dir, "fsync-probe-"); err != nil {
			return err
		}
		defer os.Remove(files[i].Name())
		defer files[i].Close()
	}
	lat = lat[:0]
	for end := time.Now().Add(d); time.Now().Before(end); {
		began := time.Now()
		done := make(chan time.Duration, len(files))
		for _, f := range files {
			go func() {
				_, _ = f.Write(buf)
				_ = unix.Fdatasync(int(f.Fd()))
				done <- time.Since(began)
			}()
		}
		<-done
		lat = append(lat, <-done)
		<-done
	}
	slices.Sort(lat)
	m.quorumP50 = lat[len(lat)/2]
	m.quorumP99 = lat[len(lat)*99/100]
	return nil
}

func fsName(t int64) string {
	switch t {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	}
	return fmt.Sprintf("0x%x", t)
}

func binarySize(path string) int64 {
	st, err := os.Stat(filepath.Clean(path))
	if err != nil {
		return 0
	}
	return st.Size()
}
