package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/chartnode"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

// startTimeout bounds the daemon's start: the control plane is ready in
// about 15 s on an idle machine, several times that on a busy one; the node
// adds the image builds (a minute or two with a cold Go build cache), its
// own start and the chart's pods.
const defaultStartTimeout = 20 * time.Minute

// up starts the environment in a daemon (or finds the running one), waits
// until it is ready while showing its progress, and walks through the
// scenarios.
func up(ctx context.Context, cfg config) int {
	out := os.Stdout
	running, err := cfg.dir.running()
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	if running {
		st, _ := cfg.dir.readState()
		if st != nil {
			fmt.Fprintf(out, "A demo environment is already running (daemon pid %d, since %s).\n", st.Pid, st.Started.Format(time.Kitchen))
		} else {
			fmt.Fprintln(out, "A demo environment is already running.")
		}
		fmt.Fprintln(out, "Walking through the scenarios again in fresh namespaces; `make demo-down` stops it, and a later `make demo` starts a new one.")
		fmt.Fprintln(out)
	} else {
		mode, ok := chooseMode(cfg, out)
		if !ok {
			return 1
		}
		cfg.mode = mode
		fmt.Fprintf(out, "Its log: %s\n\n", rel(cfg.dir.logFile()))
		code, err := spawnDaemon(ctx, cfg, out)
		switch {
		case code == exitAlreadyRunning:
			fmt.Fprintln(out, "Another `make demo` started the environment at the same moment; using that one.")
		case errors.Is(err, context.Canceled):
			interrupted(out, cfg)
			return 130
		case err != nil:
			fmt.Fprintf(os.Stderr, "demo: %v\n", err)
			return 1
		}
	}
	st, err := waitReady(ctx, cfg, nil)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			interrupted(out, cfg)
			return 130
		}
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	walk := walkthrough
	if st.Mode == modeNode {
		walk = nodeWalkthrough
	}
	if err := walk(ctx, cfg, st, out); err != nil {
		if ctx.Err() != nil {
			interrupted(out, cfg)
			return 130
		}
		fmt.Fprintf(os.Stderr, "\ndemo: the walkthrough stopped: %v\n", err)
		fmt.Fprintln(os.Stderr, "The environment keeps running for a look around (see below); `make demo-down` stops it.")
		hints(os.Stderr, cfg, st)
		return 1
	}
	hints(out, cfg, st)
	return 0
}

func interrupted(out io.Writer, cfg config) {
	fmt.Fprintln(out, "\nInterrupted. The environment keeps running (or finishes starting) in the background;")
	fmt.Fprintln(out, "`make demo` walks through it again, `make demo-down` stops every process of it.")
}

// spawnDaemon starts `demo serve` in a new session, detached from the
// terminal, and returns once it is ready (code 0) or has exited (its exit
// code), printing its log as it grows.
func spawnDaemon(ctx context.Context, cfg config, out io.Writer) (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("cannot find the demo's own binary: %w", err)
	}
	if err := os.MkdirAll(string(cfg.dir), 0o755); err != nil {
		return 0, err
	}
	// A state file left by a daemon that was killed would read as ready.
	if err := os.Remove(cfg.dir.stateFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("cannot remove the stale demo state: %w", err)
	}
	logFile, err := os.OpenFile(cfg.dir.logFile(), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, fmt.Errorf("cannot create the daemon's log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(self, "serve", "--state-dir", string(cfg.dir), "--root", cfg.root, "--webhook-binary", cfg.webhookBinary, "--sidecar-binary", cfg.sidecarBinary,
		"--mode", cfg.mode, "--node-owner", cfg.nodeOwner, "--start-timeout", cfg.startTimeout.String())
	cmd.Dir = cfg.root
	// The log file, never a pipe: a `make demo | tee` must not wait for the
	// daemon to close its output.
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("cannot start the demo daemon: %w", err)
	}
	exited := make(chan int, 1)
	go func() {
		err := cmd.Wait()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			code = 1
		}
		exited <- code
	}()
	_, err = waitReady(ctx, cfg, &daemonWatch{pid: cmd.Process.Pid, exited: exited, out: out})
	var gone *daemonExited
	if errors.As(err, &gone) {
		if gone.code == exitAlreadyRunning {
			return gone.code, nil
		}
		return gone.code, fmt.Errorf("the demo daemon exited with code %d before the environment was ready; last lines of %s:\n%s",
			gone.code, cfg.dir.logFile(), localproc.LogTail(cfg.dir.logFile(), 25, "\n"))
	}
	return 0, err
}

// daemonWatch is what waitReady watches when this process started the
// daemon: its exit, and its log to show.
type daemonWatch struct {
	pid    int
	exited <-chan int
	out    io.Writer
}

type daemonExited struct{ code int }

func (e *daemonExited) Error() string {
	return fmt.Sprintf("the demo daemon exited with code %d", e.code)
}

// waitReady waits until state.json says ready. With a watch it also copies
// the daemon's log to the terminal and fails when the daemon exits;
// without, it fails when the daemon's lock is released.
func waitReady(ctx context.Context, cfg config, w *daemonWatch) (*state, error) {
	deadline := time.Now().Add(cfg.startTimeout)
	var shown int64
	for {
		if w != nil {
			shown = copyNew(cfg.dir.logFile(), shown, w.out)
		}
		st, err := cfg.dir.readState()
		if err == nil && w != nil && st.Pid != w.pid {
			err = errors.New("the state is another daemon's") // a leftover; ours rewrites it
		}
		if err == nil && st.Phase == phaseReady {
			if w != nil {
				fmt.Fprintln(w.out)
			}
			return st, nil
		}
		if err == nil && st.Phase == phaseStopping {
			return nil, errors.New("the running demo environment is stopping; run `make demo` again once `make demo-down` (or the stop) has finished")
		}
		if w == nil {
			if running, rerr := cfg.dir.running(); rerr == nil && !running {
				return nil, fmt.Errorf("the demo daemon stopped before it was ready; see %s", cfg.dir.logFile())
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the demo environment was not ready within %s; see %s", cfg.startTimeout, cfg.dir.logFile())
		}
		var exited <-chan int
		if w != nil {
			exited = w.exited
		}
		select {
		case code := <-exited:
			copyNew(cfg.dir.logFile(), shown, w.out)
			return nil, &daemonExited{code: code}
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// copyNew writes what the file gained since offset, indented, and returns
// the new offset; it holds back a last line without its newline.
func copyNew(path string, offset int64, out io.Writer) int64 {
	f, err := os.Open(path)
	if err != nil {
		return offset
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return offset
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return offset
	}
	end := strings.LastIndexByte(string(data), '\n')
	if end < 0 {
		return offset
	}
	for _, line := range strings.Split(string(data[:end]), "\n") {
		fmt.Fprintf(out, "  | %s\n", line)
	}
	return offset + int64(end) + 1
}

// hints says how to use and stop the environment.
func hints(out io.Writer, cfg config, st *state) {
	look := "  kubectl get pods -A\n  kubectl get events -A --field-selector reason=FailedCreate\n"
	logs := fmt.Sprintf("%s (daemon), %s (webhook)", rel(cfg.dir.logFile()), rel(st.Logs["webhook"]))
	if st.Mode == modeNode {
		look = fmt.Sprintf("  kubectl get pods -A -o wide\n  kubectl -n %s logs deployment/%s-%s\n  kubectl get events -A --field-selector reason=FailedCreate\n",
			st.ReleaseNamespace, st.Release, chartnode.ChartName)
		logs = fmt.Sprintf("%s (daemon), %s (kubelet)", rel(cfg.dir.logFile()), st.Logs["kubelet"])
	}
	fmt.Fprintf(out, `

━━ The environment keeps running

Look around with the same kubectl:

  export KUBECONFIG=%s
  export PATH=%s:$PATH
%s
Kubeconfig: %s
Logs:       %s
Stop it:    make demo-down
`, st.Kubeconfig, toolsBin(cfg), look, st.Kubeconfig, logs)
	if st.Mode == modeNode {
		fmt.Fprintln(out, "\nThe node holds this machine until then: tests that need a node refuse to start while it runs.")
	}
}

// rel shortens a path under the working directory for display.
func rel(path string) string {
	wd, err := os.Getwd()
	if err != nil {
		return path
	}
	if r, ok := strings.CutPrefix(path, wd+string(os.PathSeparator)); ok {
		return r
	}
	return path
}
