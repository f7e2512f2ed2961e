// Package localproc holds what every harness that runs servers on this
// machine needs (the test helpers, the demo, the benchmarks): free loopback
// ports to give them and the tail of their logs to explain a failure.
package localproc

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
)

// FreePorts returns n distinct loopback ports that were free a moment ago.
// Every listener stays open until all n are picked, so that they differ.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	listeners := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free loopback port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// FreePort is FreePorts for one port.
func FreePort() (int, error) {
	ports, err := FreePorts(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

// LogTail returns the last n lines of the file at path joined with sep, or
// says why it could not read them.
func LogTail(path string, n int, sep string) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	lines := make([]string, 0, n)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if len(lines) == n {
			lines = lines[1:]
		}
		lines = append(lines, sc.Text())
	}
	return strings.Join(lines, sep)
}
