// Package layout holds the test that keeps product code apart from the test
// harnesses and tools: src/testenv and src/tools may import product packages,
// never the other way round.
package layout

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/kaidotio/prometheus-metrics-proxy-hook"

var harnessPrefixes = []string{module + "/src/testenv/", module + "/src/tools/"}

type listedPackage struct {
	ImportPath string
	Deps       []string
}

func TestProductCodeDoesNotImportHarnesses(t *testing.T) {
	for _, pkg := range productPackages(t) {
		for _, dep := range pkg.Deps {
			if isHarness(dep) {
				t.Errorf("%s imports the test harness or tool %s: product code must not depend on src/testenv or src/tools", pkg.ImportPath, dep)
			}
		}
	}
}

// productPackages lists every non-test package under src/ that is neither a
// harness nor a tool, with its transitive imports (test files excluded).
func productPackages(t *testing.T) []listedPackage {
	t.Helper()
	out, err := exec.Command("go", "list", "-json=ImportPath,Deps", "../...").Output()
	if err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			t.Fatalf("go list failed: %v\n%s", err, exitErr.Stderr)
		}
		t.Fatalf("go list failed: %v", err)
	}
	var product []listedPackage
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var pkg listedPackage
		if err := dec.Decode(&pkg); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("reading go list output: %v", err)
		}
		if !isHarness(pkg.ImportPath) && !strings.HasSuffix(pkg.ImportPath, "/src/layout") {
			product = append(product, pkg)
		}
	}
	if len(product) < 5 {
		t.Fatalf("go list found %d product packages under src/; the layout test looks in the wrong place", len(product))
	}
	return product
}

func isHarness(importPath string) bool {
	for _, prefix := range harnessPrefixes {
		if strings.HasPrefix(importPath, prefix) {
			return true
		}
	}
	return false
}
