package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

// child is a process the demo started: in its own process group (so that
// stopping it reaches whatever it forks), killed by the kernel when the
// demo process that started it dies (so that nothing outlives a crashed or
// SIGKILLed demo), with its output in a log file.
type child struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	err     error // the exit status, once exited is closed
}

func startChild(name, logPath string, env []string, bin string, args ...string) (*child, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cannot create the log of %s: %w", name, err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start %s (%s): %w", name, bin, err)
	}
	c := &child{name: name, logPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) running() bool {
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// signal sends sig to the process itself (not its group): the sidecar's
// SIGTERM is what the kubelet sends to the container's main process.
func (c *child) signal(sig syscall.Signal) error {
	if !c.running() {
		return fmt.Errorf("%s is not running", c.name)
	}
	return c.cmd.Process.Signal(sig)
}

// wait waits for the exit up to timeout.
func (c *child) wait(timeout time.Duration) error {
	select {
	case <-c.exited:
		return c.err
	case <-time.After(timeout):
		return fmt.Errorf("%s did not exit within %s", c.name, timeout)
	}
}

// stop ends the process group: SIGTERM, SIGKILL after grace.
func (c *child) stop(grace time.Duration) error {
	if !c.running() {
		return nil
	}
	pgid := c.pid()
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-c.exited
		return fmt.Errorf("%s ignored SIGTERM for %s and was killed", c.name, grace)
	}
	// Anything the leader left behind in its group goes too.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	return nil
}

// logTail is the end of the log, for error messages.
func (c *child) logTail(n int) string {
	return localproc.LogTail(c.logPath, n, "\n")
}

// logLines reads the log's lines so far.
func (c *child) logLines() []string {
	data, err := os.ReadFile(c.logPath)
	if err != nil {
		return nil
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

var errExited = errors.New("exited")
