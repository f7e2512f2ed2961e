package images_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
)

func TestExportCommitWritesThatCommitsTree(t *testing.T) {
	repo := t.TempDir()
	git := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", repo, "-c", "user.name=t", "-c", "user.email=t@t"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	write := func(name, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(repo, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(repo, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	git("init", "-q")
	write("src/cmd/old/main.go", "old")
	git("add", ".")
	git("commit", "-q", "-m", "old")
	old := git("rev-parse", "HEAD")
	write("src/cmd/old/main.go", "new")
	write("added.txt", "new")
	git("commit", "-q", "-am", "new")
	git("add", "added.txt")
	git("commit", "-q", "-m", "added")

	dir := filepath.Join(t.TempDir(), "previous")
	if err := images.ExportCommit(t.Context(), repo, old, dir); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "src/cmd/old/main.go")); err != nil || string(got) != "old" {
		t.Errorf("exported src/cmd/old/main.go = %q, %v; want the old commit's %q", got, err, "old")
	}
	if _, err := os.Stat(filepath.Join(dir, "added.txt")); !os.IsNotExist(err) {
		t.Errorf("added.txt, added after the commit, is in the export (stat: %v)", err)
	}

	err := images.ExportCommit(t.Context(), repo, "0123456789abcdef0123456789abcdef01234567", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "is not in the repository") {
		t.Errorf("exporting a missing commit: %v; want an error saying it is not in the repository", err)
	}
}
