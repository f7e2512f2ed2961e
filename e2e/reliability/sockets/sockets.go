// Package sockets reads a process's open file descriptors and TCP
// connections from /proc, for leak checks on processes a test runs but
// cannot look into (the webhook binary): how many connections it keeps to
// each Redis node, how many clients it still serves.
package sockets

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Conn is one TCP socket of a process.
type Conn struct {
	Local, Remote netip.AddrPort
	State         State
}

// State is the kernel's TCP state code.
type State int

// The states leak checks look at.
const (
	Established State = 0x01
	TimeWait    State = 0x06
	CloseWait   State = 0x08
	Listen      State = 0x0A
)

func (s State) String() string {
	switch s {
	case Established:
		return "ESTABLISHED"
	case TimeWait:
		return "TIME_WAIT"
	case CloseWait:
		return "CLOSE_WAIT"
	case Listen:
		return "LISTEN"
	}
	return fmt.Sprintf("state-%02X", int(s))
}

// FDs counts the open file descriptors of pid.
func FDs(pid int) (int, error) {
	entries, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		return 0, fmt.Errorf("sockets: reading the descriptors of process %d: %w", pid, err)
	}
	return len(entries), nil
}

// TCP lists the TCP sockets (IPv4 and IPv6) that pid holds open.
func TCP(pid int) ([]Conn, error) {
	inodes, err := socketInodes(pid)
	if err != nil {
		return nil, err
	}
	var out []Conn
	for _, table := range []string{"tcp", "tcp6"} {
		conns, err := readTable(filepath.Join("/proc", strconv.Itoa(pid), "net", table), inodes)
		if err != nil {
			return nil, err
		}
		out = append(out, conns...)
	}
	return out, nil
}

// Count tallies conns by remote port, for established connections only.
func Count(conns []Conn) map[uint16]int {
	out := map[uint16]int{}
	for _, c := range conns {
		if c.State == Established {
			out[c.Remote.Port()]++
		}
	}
	return out
}

func socketInodes(pid int) (map[string]bool, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("sockets: reading the descriptors of process %d: %w", pid, err)
	}
	inodes := map[string]bool{}
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed in the meantime
		}
		if inode, ok := strings.CutPrefix(target, "socket:["); ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	return inodes, nil
}

// readTable parses /proc/<pid>/net/tcp{,6}: "sl local rem st ... inode".
func readTable(path string, inodes map[string]bool) ([]Conn, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("sockets: %w", err)
	}
	defer f.Close()
	var out []Conn
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || !inodes[fields[9]] {
			continue
		}
		local, err := parseAddr(fields[1])
		if err != nil {
			return nil, fmt.Errorf("sockets: %s: %w", path, err)
		}
		remote, err := parseAddr(fields[2])
		if err != nil {
			return nil, fmt.Errorf("sockets: %s: %w", path, err)
		}
		st, err := strconv.ParseUint(fields[3], 16, 8)
		if err != nil {
			return nil, fmt.Errorf("sockets: %s: state %q: %w", path, fields[3], err)
		}
		out = append(out, Conn{Local: local, Remote: remote, State: State(st)})
	}
	return out, sc.Err()
}

// parseAddr reads "0100007F:1F90": the address as 32-bit words in host
// (little-endian) byte order, then the port in hex.
func parseAddr(s string) (netip.AddrPort, error) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("address %q has no port", s)
	}
	raw, err := hex.DecodeString(hexAddr)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("address %q is not 4 or 16 hex bytes", s)
	}
	for w := 0; w < len(raw); w += 4 {
		raw[w], raw[w+1], raw[w+2], raw[w+3] = raw[w+3], raw[w+2], raw[w+1], raw[w]
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port of %q: %w", s, err)
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}
