package images

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
)

// modulePath identifies the repository root among the go.mod files on the
// way up (hack/tools/* hold nested tools modules).
const modulePath = "github.com/kaidotio/prometheus-metrics-proxy-hook"

// goBuild is one `go build` of static binaries, as the Dockerfile and the
// Makefile build them: CGO off, -trimpath, no VCS stamp, stripped.
type goBuild struct {
	goCmd   string
	root    string
	arch    string
	ldflags string
}

// build compiles the packages (relative to the repository root, "./src/...")
// in one invocation and returns their binaries by package, in outDir.
func (b goBuild) build(ctx context.Context, outDir string, pkgs ...string) (map[string]string, error) {
	bins := make(map[string]string, len(pkgs))
	byName := map[string]string{}
	for _, pkg := range pkgs {
		name := path.Base(pkg)
		if other, ok := byName[name]; ok {
			return nil, fmt.Errorf("the packages %s and %s would both build a binary named %s; build them separately", other, pkg, name)
		}
		byName[name] = pkg
		bins[pkg] = filepath.Join(outDir, name)
	}
	goCmd := b.goCmd
	if goCmd == "" {
		goCmd = "go"
	}
	args := []string{"build", "-trimpath", "-buildvcs=false", "-ldflags", strings.TrimSpace("-s -w " + b.ldflags), "-o", outDir + string(filepath.Separator)}
	cmd := exec.CommandContext(ctx, goCmd, append(args, pkgs...)...)
	cmd.Dir = b.root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+b.archOrHost())
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, out)
	}
	return bins, nil
}

func (b goBuild) archOrHost() string {
	if b.arch != "" {
		return b.arch
	}
	return runtime.GOARCH
}
