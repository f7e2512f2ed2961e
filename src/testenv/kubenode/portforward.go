package kubenode

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"syscall"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
)

// forwardingLine is what kubectl port-forward prints once it listens.
var forwardingLine = regexp.MustCompile(`^Forwarding from (127\.0\.0\.1:\d+) -> \d+`)

// PortForward runs `kubectl port-forward` to port of target (say
// "pod/web" or "service/x") in namespace, on a free loopback port, and
// returns the local address once kubectl listens. stop ends kubectl and
// waits for it; call it also when the forward is no longer needed.
func (n *Node) PortForward(ctx context.Context, namespace, target string, port int) (addr string, stop func(), err error) {
	bin, err := kubetest.Tool("kubectl")
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "--kubeconfig="+n.KubeconfigPath, "-n", namespace, "port-forward",
		"--address=127.0.0.1", target, ":"+strconv.Itoa(port))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("cannot start kubectl port-forward: %w", err)
	}
	stop = func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}
	found := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			if m := forwardingLine.FindStringSubmatch(s.Text()); m != nil {
				found <- m[1]
				break
			}
		}
		close(found)
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case addr, ok := <-found:
		if !ok {
			stop()
			return "", nil, errors.New("kubectl port-forward exited without listening (its error is on stderr)")
		}
		return addr, stop, nil
	case <-ctx.Done():
		stop()
		return "", nil, fmt.Errorf("kubectl port-forward %s/%s %d did not listen: %w", namespace, target, port, ctx.Err())
	}
}
