package kubetest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// modulePath identifies the repository root among the go.mod files on the
// way up (hack/tools/* hold nested tools modules).
const modulePath = "github.com/kaidotio/prometheus-metrics-proxy-hook"

// ToolsBin returns the directory hack/install-tools.sh installs into:
// $PMPH_TOOLS_BIN when set (the Makefile exports it), otherwise .tools/bin
// under the repository root.
func ToolsBin() (string, error) {
	if dir := os.Getenv("PMPH_TOOLS_BIN"); dir != "" {
		return dir, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", fmt.Errorf("cannot find the tools directory: %w; set PMPH_TOOLS_BIN or run from the repository", err)
	}
	return filepath.Join(root, ".tools", "bin"), nil
}

// RepoRoot is the root of this repository, found from the working
// directory (go test runs a package's tests in the package directory).
func RepoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("the working directory is unknown: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if isModuleRoot(filepath.Join(dir, "go.mod")) {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("no go.mod of %s above %s", modulePath, wd)
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

// Tool returns the path of a binary built by hack/install-tools.sh
// (kube-apiserver, kube-controller-manager, kubectl, helm, ct, actionlint).
func Tool(name string) (string, error) {
	dir, err := ToolsBin()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	if st, err := os.Stat(path); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s is not installed in %s; run `make tools` (or hack/install-tools.sh %s) to build it", name, dir, name)
	}
	return path, nil
}

// systemTool finds a command installed from a Debian package. Debian puts
// some daemons in /usr/sbin, which is not on every user's PATH.
func systemTool(name, debianPackage string) (string, error) {
	if path, err := exec.LookPath(name); err == nil {
		return path, nil
	}
	for _, dir := range []string{"/usr/bin", "/usr/sbin"} {
		path := filepath.Join(dir, name)
		if st, err := os.Stat(path); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return path, nil
		}
	}
	return "", fmt.Errorf("%s is not installed; run `make tools` (it installs the Debian package %s)", name, debianPackage)
}
