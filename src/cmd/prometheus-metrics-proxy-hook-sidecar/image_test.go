package main

import (
	"os"
	"path"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
)

// TestImageInstallsTheInjectedCommand: the command the webhook writes into
// the injected container is where the Dockerfile installs this binary.
func TestImageInstallsTheInjectedCommand(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	dockerfile, err := os.ReadFile(filepath.Join(wd, "..", "..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if path.Base(admission.SidecarCommand) != filepath.Base(wd) {
		t.Fatalf("admission.SidecarCommand %s does not run this command (%s)", admission.SidecarCommand, filepath.Base(wd))
	}
	copied := regexp.MustCompile(`(?m)^COPY --from=build .*/` + regexp.QuoteMeta(path.Base(admission.SidecarCommand)) + `\b.* ` + regexp.QuoteMeta(path.Dir(admission.SidecarCommand)) + `/$`)
	if !copied.Match(dockerfile) {
		t.Fatalf("the Dockerfile does not install %s into %s/, where admission.SidecarCommand expects it", path.Base(admission.SidecarCommand), path.Dir(admission.SidecarCommand))
	}
}
