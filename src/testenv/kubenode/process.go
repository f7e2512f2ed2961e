package kubenode

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

const (
	// stopGrace is how long a component gets to exit after SIGTERM; the
	// kubelet and containerd take a second or two to close their sockets.
	stopGrace = 10 * time.Second
	// killWait bounds the wait after SIGKILL.
	killWait = 10 * time.Second
	// markerEnv is set in the environment of every process the harness starts.
	// containerd passes its environment on to the container shims, so the
	// sweep finds shims a crashed run left behind by this variable.
	markerEnv = "PMPH_KUBENODE_DIR"
)

// process is one component in its own process group, logging to a file.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

func startProcess(dir, name, bin string, args, env []string) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cannot create the log file of %s: %w", name, err)
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "+ %s %s\n", bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(env, markerEnv+"="+filepath.Dir(dir))
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Pdeathsig: a test binary killed on timeout takes its node with it; the
	// next start's sweep removes what the components left.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start %s (%s): %w", name, bin, err)
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// running reports whether the process has not exited yet.
func (p *process) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM to the process group, SIGKILL after stopGrace, and
// waits for the leader to exit.
func (p *process) stop() error {
	pgid := p.pid()
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopGrace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		select {
		case <-p.exited:
		case <-time.After(killWait):
			return fmt.Errorf("%s (pid %d) did not exit within %s of SIGKILL", p.name, pgid, killWait)
		}
	}
	// Anything the leader forked and left in its group goes too.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	return nil
}

// failure wraps err with the last lines of the component's log.
func (p *process) failure(err error) error {
	return fmt.Errorf("%w; last lines of %s:\n%s", err, p.logPath, localproc.LogTail(p.logPath, 30, "\n"))
}
