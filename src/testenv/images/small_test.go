package images_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/countingapp"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

func TestImageConfigs(t *testing.T) {
	tests := []struct {
		name       string
		ref        string
		entrypoint []string
		user       string
		// env must be in the image's environment, with PATH.
		env []string
	}{
		{images.NamePause, images.PauseRef, []string{"/pause"}, "65535:65535", nil},
		{images.NameMetricsApp, images.MetricsAppRef, []string{"/metrics-app"}, "65532:65532",
			[]string{fmt.Sprintf("%s=:%d", countingapp.EnvListen, images.MetricsAppPort), countingapp.EnvTick + "=1s", countingapp.EnvDrain + "=5s"}},
		{images.NameBusybox, images.BusyboxRef, nil, "65534:65534", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := sharedBuild(t, tt.name)
			cfg := configOf(t, b.Image)
			if len(b.Refs) != 1 || b.Refs[0] != tt.ref {
				t.Errorf("references %q, want %q", b.Refs, tt.ref)
			}
			if strings.Join(cfg.Config.Entrypoint, " ") != strings.Join(tt.entrypoint, " ") {
				t.Errorf("entrypoint %q, want %q", cfg.Config.Entrypoint, tt.entrypoint)
			}
			if cfg.Config.User != tt.user {
				t.Errorf("user %q, want %q", cfg.Config.User, tt.user)
			}
			for _, kv := range append([]string{images.DefaultPath}, tt.env...) {
				if !slices.Contains(cfg.Config.Env, kv) {
					t.Errorf("environment %q lacks %q", cfg.Config.Env, kv)
				}
			}
		})
	}
}

func TestPauseBlocksUntilSIGTERM(t *testing.T) {
	dir := extract(t, sharedBuild(t, images.NamePause).Image)
	cmd := exec.Command(filepath.Join(dir, "pause"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		t.Fatalf("pause exited before it was signalled: %v", err)
	case <-time.After(500 * time.Millisecond):
		// Still blocking, as a sandbox container must.
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("pause exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("pause did not exit within 10 s of SIGTERM")
	}
}

// TestMetricsAppDrainsAndLogsItsFinalValue runs the app from its image: the
// counter grows, keeps growing and being served after SIGTERM until the drain
// time is over, and the final value logged is at least the last one scraped.
func TestMetricsAppDrainsAndLogsItsFinalValue(t *testing.T) {
	dir := extract(t, sharedBuild(t, images.NameMetricsApp).Image)
	port, err := localproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(filepath.Join(dir, "metrics-app"))
	cmd.Env = []string{
		fmt.Sprintf("%s=127.0.0.1:%d", countingapp.EnvListen, port),
		countingapp.EnvTick + "=50ms", countingapp.EnvDrain + "=1s",
	}
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)

	before := waitForTicks(t, url, 3)
	cmd.Process.Signal(syscall.SIGTERM)
	draining := waitForTicks(t, url, before+5)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the app exited with %v after draining, want 0; it logged:\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the app did not exit after its 1 s drain; it logged:\n%s", logs.String())
	}
	final, ok := finalValue(logs.Bytes())
	if !ok {
		t.Fatalf("the app printed no final value:\n%s", logs.String())
	}
	if final < draining {
		t.Errorf("final value %v is below the %v scraped while draining", final, draining)
	}
}

// finalValue is the final counter value among the app's output lines.
func finalValue(out []byte) (float64, bool) {
	for _, line := range bytes.Split(out, []byte("\n")) {
		if l, ok := countingapp.ParseLine(line); ok && l.Final != nil {
			return *l.Final, true
		}
	}
	return 0, false
}

var ticksLine = regexp.MustCompile(`(?m)^` + countingapp.CounterName + ` (\S+)$`)

// waitForTicks scrapes until the counter reaches at least want and returns it.
func waitForTicks(t *testing.T, url string, want float64) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var last error
	for {
		got, err := scrapeTicks(ctx, url)
		if err == nil && got >= want {
			return got
		}
		last = err
		select {
		case <-ctx.Done():
			t.Fatalf("the counter at %s did not reach %v: last scrape %v, %v", url, want, got, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func scrapeTicks(ctx context.Context, url string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	m := ticksLine.FindSubmatch(body)
	if m == nil {
		return 0, fmt.Errorf("no pmph_metrics_app_ticks_total in %q", body)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

func TestBusyboxImageHasTheAppletsTestsUse(t *testing.T) {
	for _, name := range []string{images.NameBusybox, images.NameRedis} {
		t.Run(name, func(t *testing.T) {
			dir := extract(t, sharedBuild(t, name).Image)
			for _, applet := range []string{"bin/sh", "bin/cat", "bin/sed", "bin/grep", "bin/sleep", "bin/date", "usr/bin/printf", "usr/bin/wget", "usr/bin/nc", "usr/bin/nslookup"} {
				target, err := os.Readlink(filepath.Join(dir, applet))
				if err != nil || target != "/bin/busybox" {
					t.Errorf("/%s: %q, %v; want a link to /bin/busybox", applet, target, err)
				}
			}
			if os.Geteuid() != 0 {
				return
			}
			cmd := exec.Command("/bin/sh", "-c", "echo ok | sed s/ok/fine/ | grep -x fine")
			cmd.Env = []string{images.DefaultPath}
			cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: dir, Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "fine" {
				t.Errorf("sh | sed | grep in the image: %q, %v", out, err)
			}
		})
	}
}

func TestCoreDNSImage(t *testing.T) {
	b := sharedBuild(t, images.NameCoreDNS)
	dir := extract(t, b.Image)
	out, err := exec.Command(filepath.Join(dir, "coredns"), "-version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "CoreDNS-1.15.0") {
		t.Errorf("coredns -version: %q, %v; want CoreDNS-1.15.0", out, err)
	}
	// cap_net_bind_service=+ep: revision 2 with the effective flag, bit 10
	// permitted.
	want := string([]byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	h := layerHeader(t, b.Image, "coredns")
	if got := h.PAXRecords["SCHILY.xattr.security.capability"]; got != want {
		t.Errorf("/coredns has the capability attribute %q, want %q (cap_net_bind_service=+ep)", got, want)
	}
}

func layerHeader(t *testing.T, img v1.Image, name string) *tar.Header {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("the image has %d layers (%v), want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			t.Fatalf("the layer has no %s", name)
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == name {
			return h
		}
	}
}
