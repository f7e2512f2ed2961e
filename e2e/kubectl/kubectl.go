// Package kubectl runs the real kubectl built by hack/install-tools.sh, the
// way a user types it: arguments, an optional manifest on stdin, and the
// output split into what kubectl prints on stdout and on stderr (warnings
// and errors), so that tests can assert on exactly what a user reads.
package kubectl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
)

// waitDelay bounds how long Run waits for kubectl's output pipes after it
// exited or was killed; a helper it started could otherwise hold them open.
const waitDelay = 5 * time.Second

// Runner runs kubectl against one kubeconfig.
type Runner struct {
	// Bin is the kubectl binary.
	Bin string
	// Kubeconfig is passed as KUBECONFIG; the user's own never leaks in.
	Kubeconfig string
}

// New returns a Runner for the kubectl in the tools directory.
func New(kubeconfig string) (*Runner, error) {
	bin, err := kubetest.Tool("kubectl")
	if err != nil {
		return nil, err
	}
	return &Runner{Bin: bin, Kubeconfig: kubeconfig}, nil
}

// Result is one finished kubectl command.
type Result struct {
	Args     []string
	Stdout   string
	Stderr   string
	ExitCode int
}

// OK tells whether kubectl exited 0.
func (r Result) OK() bool { return r.ExitCode == 0 }

// Command is the command line as a user would type it.
func (r Result) Command() string { return "kubectl " + strings.Join(r.Args, " ") }

// Err is nil when kubectl succeeded and otherwise an error that carries the
// command and what kubectl printed, for test failures.
func (r Result) Err() error {
	if r.OK() {
		return nil
	}
	return fmt.Errorf("%s exited with code %d: %s", r.Command(), r.ExitCode, strings.TrimSpace(r.Stderr+"\n"+r.Stdout))
}

// Run runs kubectl with args, feeding stdin when it is not empty. A non-zero
// exit is not an error (it is in Result.ExitCode, since refusals are what
// tests assert on); the error is for a kubectl that could not run or was
// stopped by ctx.
func (k *Runner) Run(ctx context.Context, stdin string, args ...string) (Result, error) {
	res := Result{Args: args}
	cmd := exec.CommandContext(ctx, k.Bin, args...)
	// Setpgid, so that cancelling kills whatever kubectl started too;
	// Pdeathsig, so that a test binary killed on timeout leaves no kubectl
	// waiting on an API server that is gone.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	cmd.Env = append(withoutKubeconfig(os.Environ()), "KUBECONFIG="+k.Kubeconfig)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res.Stdout, res.Stderr = stdout.String(), stderr.String()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return res, nil
	case ctx.Err() != nil:
		return res, fmt.Errorf("kubectl %s was stopped: %w", strings.Join(args, " "), context.Cause(ctx))
	case errors.As(err, &exitErr) && exitErr.ExitCode() > 0:
		res.ExitCode = exitErr.ExitCode()
		return res, nil
	default:
		return res, fmt.Errorf("cannot run kubectl %s: %w", strings.Join(args, " "), err)
	}
}

// MustSucceed runs kubectl and turns a non-zero exit into an error.
func (k *Runner) MustSucceed(ctx context.Context, stdin string, args ...string) (Result, error) {
	res, err := k.Run(ctx, stdin, args...)
	if err != nil {
		return res, err
	}
	return res, res.Err()
}

func withoutKubeconfig(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, "KUBECONFIG=") {
			out = append(out, kv)
		}
	}
	return out
}
