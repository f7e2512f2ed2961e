package images

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io/fs"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// RedisUID is the uid the chart runs Redis as (the official image's redis user).
const RedisUID = 999

// Redis builds the image the chart's Redis StatefulSet runs, under the
// reference values.yaml names (redis.image.repository:tag), from this
// machine's Debian packages: busybox-static for the shell and the commands the
// chart's init container, probes and test pod use (sh, cat, sed, grep, wget,
// sleep, date), redis-server and redis-cli, and every shared library ldd lists
// for them, the dynamic loader included.
//
// Debian bookworm ships Redis 7.0, so the image holds 7.0 under the chart's
// 7.4 tag: the org.opencontainers.image.version label says which Redis it
// really is. The chart uses nothing 7.4 added; the kind CI job runs the real
// 7.4 image.
func Redis(ctx context.Context, opts Options) (Built, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return Built{}, err
	}
	chart, err := ReadChart(opts.Root)
	if err != nil {
		return Built{}, err
	}
	dir, err := newBuildDir(opts.WorkDir, NameRedis)
	if err != nil {
		return Built{}, err
	}
	root, err := busyboxRootFS(ctx)
	if err != nil {
		return Built{}, err
	}
	root.Users(Account{Name: "redis", ID: RedisUID, Home: "/data"})
	root.Dir("data", 0o755, Owner{UID: RedisUID, GID: RedisUID})
	root.Dir("etc/redis", 0o755, Root)
	var bins []string
	for _, cmd := range []string{"redis-server", "redis-cli"} {
		path, err := exec.LookPath(cmd)
		if err != nil {
			return Built{}, fmt.Errorf("%s is not installed (Debian package %s; hack/install-tools.sh installs it): %w", cmd, debianPackage(cmd), err)
		}
		if err := root.HostFile("usr/bin/"+cmd, path); err != nil {
			return Built{}, err
		}
		bins = append(bins, path)
	}
	if err := addSharedLibraries(ctx, root, bins...); err != nil {
		return Built{}, err
	}
	version, err := redisVersion(ctx, bins[0])
	if err != nil {
		return Built{}, err
	}
	img, err := assemble(root, dir, "", v1.Config{
		User:       fmt.Sprintf("%d:%d", RedisUID, RedisUID),
		Cmd:        []string{"redis-server"},
		Env:        []string{DefaultPath},
		WorkingDir: "/data",
		Labels: map[string]string{
			"org.opencontainers.image.title":       "redis",
			"org.opencontainers.image.version":     version,
			"org.opencontainers.image.description": fmt.Sprintf("Debian's redis-server %s with busybox-static, under the chart's tag %s (not Redis %s)", version, chart.RedisTag, chart.RedisTag),
		},
	})
	if err != nil {
		return Built{}, err
	}
	return Built{Name: NameRedis, Refs: []string{chart.RedisRef()}, Image: img}, nil
}

// Busybox builds a busybox-static image for test pods that need a shell, nc,
// wget or nslookup; it runs as nobody unless the pod says otherwise.
func Busybox(ctx context.Context, opts Options) (Built, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return Built{}, err
	}
	dir, err := newBuildDir(opts.WorkDir, NameBusybox)
	if err != nil {
		return Built{}, err
	}
	root, err := busyboxRootFS(ctx)
	if err != nil {
		return Built{}, err
	}
	root.Users()
	img, err := assemble(root, dir, "", v1.Config{
		User: "65534:65534",
		Cmd:  []string{"sh"},
		Env:  []string{DefaultPath},
	})
	if err != nil {
		return Built{}, err
	}
	return Built{Name: NameBusybox, Refs: []string{BusyboxRef}, Image: img}, nil
}

// busyboxRootFS holds /bin/busybox from busybox-static, a symbolic link for
// each of its applets at the path `busybox --list-full` gives, and /tmp.
func busyboxRootFS(ctx context.Context) (*RootFS, error) {
	path, err := exec.LookPath("busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox is not installed (Debian package busybox-static; hack/install-tools.sh installs it): %w", err)
	}
	if err := checkStatic(path); err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, path, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("listing the applets of %s: %w", path, err)
	}
	root := NewRootFS()
	if err := root.HostFile("bin/busybox", path); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		applet := strings.TrimSpace(sc.Text())
		if applet == "" || root.Has(applet) {
			continue
		}
		root.Symlink(applet, "/bin/busybox")
	}
	if !root.Has("bin/sh") {
		return nil, fmt.Errorf("%s has no sh applet", path)
	}
	root.Dir("tmp", fs.ModeSticky|0o777, Root)
	return root, nil
}

// checkStatic refuses a dynamically linked busybox (Debian's busybox
// package): the images carry no C library for it.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; install the Debian package busybox-static instead of busybox", path)
		}
	}
	return nil
}

// lddLine matches "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
// "/lib64/ld-linux-x86-64.so.2 (0x...)".
var lddLine = regexp.MustCompile(`^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$`)

// addSharedLibraries copies every library ldd lists for the binaries to the
// path ldd gives, so the loader finds them in its default directories without
// an ld.so.cache.
func addSharedLibraries(ctx context.Context, root *RootFS, bins ...string) error {
	for _, bin := range bins {
		out, err := exec.CommandContext(ctx, "ldd", bin).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ldd %s: %w\n%s", bin, err, out)
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			if strings.Contains(sc.Text(), "not found") {
				return fmt.Errorf("ldd %s: a library is missing on this machine: %s", bin, strings.TrimSpace(sc.Text()))
			}
			m := lddLine.FindStringSubmatch(sc.Text())
			if m == nil || root.Has(m[1]) {
				continue
			}
			if err := root.HostFile(m[1], filepath.Clean(m[1])); err != nil {
				return err
			}
		}
	}
	return nil
}

var redisVersionField = regexp.MustCompile(`\bv=(\S+)`)

func redisVersion(ctx context.Context, redisServer string) (string, error) {
	out, err := exec.CommandContext(ctx, redisServer, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", redisServer, err)
	}
	m := redisVersionField.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("%s --version printed no v=VERSION: %q", redisServer, out)
	}
	return string(m[1]), nil
}

func debianPackage(cmd string) string {
	if cmd == "redis-cli" {
		return "redis-tools"
	}
	return "redis-server"
}
