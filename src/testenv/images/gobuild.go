package images

import (
	"bufio"
	"bytes"
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

// RepoRoot returns the root of this repository, found from the working
// directory (go test runs a package's tests in the package directory).
func RepoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding the repository root: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if isModuleRoot(filepath.Join(dir, "go.mod")) {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("finding the repository root: no go.mod of %s above %s", modulePath, wd)
		}
	}
}

func isModuleRoot(goMod string) bool {
	data, err := os.ReadFile(goMod)
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`) == modulePath
		}
	}
	return false
}

// ToolsBin is where hack/install-tools.sh installs: $PMPH_TOOLS_BIN, or
// .tools/bin under the repository root.
func ToolsBin(root string) string {
	if dir := os.Getenv("PMPH_TOOLS_BIN"); dir != "" {
		return dir
	}
	return filepath.Join(root, ".tools", "bin")
}
