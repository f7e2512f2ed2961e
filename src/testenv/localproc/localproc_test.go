package localproc_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

func TestFreePorts(t *testing.T) {
	ports, err := localproc.FreePorts(20)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p <= 0 || p > 65535 || seen[p] {
			t.Fatalf("ports %v: %d is out of range or repeated", ports, p)
		}
		seen[p] = true
	}
}

func TestLogTail(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name, path string
		n          int
		want       string
	}{
		{"last lines", write("a.log", "1\n2\n3\n4\n"), 2, "3 | 4"},
		{"fewer lines than asked", write("b.log", "only\n"), 5, "only"},
		{"no trailing newline", write("c.log", "1\n2"), 1, "2"},
		{"empty", write("d.log", ""), 3, ""},
		{"missing", filepath.Join(dir, "none.log"), 3, "(cannot read "},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := localproc.LogTail(tc.path, tc.n, " | ")
			if !strings.HasPrefix(got, tc.want) || (tc.name != "missing" && got != tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}
