package main

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/deps.txt with the sidecar's current dependencies")

const depsFile = "testdata/deps.txt"

// forbidden are dependencies the sidecar must never link, whatever the
// pinned list says: it talks to the webhook's lease API only, never to
// Redis or the Kubernetes API, and it runs in every opted-in pod.
var forbidden = []string{"github.com/gomodule/redigo", "k8s.io/", "sigs.k8s.io/"}

// TestSidecarDependencies pins the packages outside the standard library
// that the sidecar binary links, so that a new one is a decision, not an
// accident.
func TestSidecarDependencies(t *testing.T) {
	got := nonStandardDeps(t)
	for _, d := range got {
		for _, f := range forbidden {
			if strings.HasPrefix(d, f) {
				t.Errorf("the sidecar links %s; it must not depend on Redis or Kubernetes client packages (%v)", d, forbidden)
			}
		}
	}
	if *update {
		if err := os.WriteFile(depsFile, []byte(strings.Join(got, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	b, err := os.ReadFile(depsFile)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Fields(string(b))
	added, removed := difference(got, want), difference(want, got)
	if len(added) > 0 || len(removed) > 0 {
		t.Fatalf("the sidecar's dependencies changed.\nadded:   %v\nremoved: %v\n"+
			"The sidecar runs in every opted-in pod and must stay small. If the change is deliberate, run\n"+
			"  go test ./src/cmd/prometheus-metrics-proxy-hook-sidecar/ -run TestSidecarDependencies -update\n"+
			"and commit %s with a reason in the commit message.", added, removed, filepath.Join("src/cmd/prometheus-metrics-proxy-hook-sidecar", depsFile))
	}
}

func nonStandardDeps(t *testing.T) []string {
	t.Helper()
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	slices.Sort(deps)
	return deps
}

// difference lists the entries of a that b lacks.
func difference(a, b []string) []string {
	var out []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, s)
		}
	}
	return out
}
