package kubetest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

const (
	// stopGrace is how long a process gets to exit after SIGTERM. etcd and the
	// API server flush and close their listeners in well under a second; the
	// bound only matters when one of them hangs.
	stopGrace = 10 * time.Second
	// killWait bounds the wait after SIGKILL, which only a process stuck in
	// uninterruptible sleep survives; Stop reports it rather than hang a test.
	killWait = 10 * time.Second
	// logTailLines is how much of a process log goes into an error message:
	// enough for the fatal line and its context, short enough to read.
	logTailLines = 30
)

// process is one child process running in its own process group, with its
// stdout and stderr in a log file.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	// exited is closed when the process has exited. It is not reaped until
	// stop: as a zombie it keeps its pid, and so its process group id,
	// reserved, and stop's final SIGKILL to the group cannot hit an unrelated
	// group that got the same id.
	exited chan struct{}

	stopOnce sync.Once
	stopErr  error
	// waitErr is the exit status; it is set by stop once reaped.
	waitErr error
}

// startProcess starts bin with args in dir. The process leads its own process
// group so that stop can signal everything it may have forked, and it gets
// SIGKILL when the thread that started it dies, so that a test binary that
// panics or is killed on timeout leaves no API server behind.
func startProcess(name, dir, bin string, args, env []string) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	// A fresh log per start, so that a retry reads only its own output.
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cannot create the log file of %s: %w", name, err)
	}
	// The child inherits its own descriptor; ours is not needed after Start.
	defer logFile.Close()
	fmt.Fprintf(logFile, "+ %s %s\n", bin, strings.Join(args, " "))

	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start %s (%s): %w", name, bin, err)
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go p.watch()
	return p, nil
}

// watch closes exited once the process has exited, leaving it unreaped.
func (p *process) watch() {
	defer close(p.exited)
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, p.pid(), &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			// nil: it exited. Anything else (ECHILD) means there is no child
			// left to wait for, which stop handles the same way.
			return
		}
	}
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// stop ends the process group: SIGTERM, SIGKILL after stopGrace, then, with
// the leader exited but not yet reaped, a final SIGKILL to the group for
// anything the leader left behind; then it reaps the leader. It is safe to
// call more than once and on a process that has already exited.
func (p *process) stop() error {
	p.stopOnce.Do(func() { p.stopErr = p.terminate() })
	return p.stopErr
}

func (p *process) terminate() error {
	pgid := p.pid()
	select {
	case <-p.exited:
	default:
		signalGroup(pgid, syscall.SIGTERM)
		grace := time.NewTimer(stopGrace)
		select {
		case <-p.exited:
			grace.Stop()
		case <-grace.C:
			signalGroup(pgid, syscall.SIGKILL)
			deadline := time.NewTimer(killWait)
			defer deadline.Stop()
			select {
			case <-p.exited:
			case <-deadline.C:
				return fmt.Errorf("%s (pid %d) did not exit within %s of SIGKILL", p.name, pgid, killWait)
			}
		}
	}
	signalGroup(pgid, syscall.SIGKILL)
	p.waitErr = p.cmd.Wait()
	return nil
}

// exitError describes how the process ended; call it only after stop.
func (p *process) exitError() error {
	if p.waitErr == nil {
		return fmt.Errorf("%s exited with status 0 while it should keep running", p.name)
	}
	return fmt.Errorf("%s exited early (%v)", p.name, p.waitErr)
}

func signalGroup(pgid int, sig syscall.Signal) {
	// ESRCH (no such group) is the expected outcome once everything exited.
	_ = syscall.Kill(-pgid, sig)
}

// logTail returns the last lines of the process log, for error messages.
func (p *process) logTail() string {
	return localproc.LogTail(p.logPath, logTailLines, "\n")
}

// failure wraps err with the tail of the process log, which is where etcd and
// the API server say why they did not come up.
func (p *process) failure(err error) error {
	return fmt.Errorf("%w; last lines of %s:\n%s", err, p.logPath, p.logTail())
}

// addressInUse tells whether the process failed because a port it was given
// was taken between our probe and its bind, which a retry with fresh ports
// fixes.
func (p *process) addressInUse() bool {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return false
	}
	return bytes.Contains(data, []byte("address already in use"))
}
