package promk8s

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteRuleDir(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		wantErr string
	}{
		{name: "one file per key", files: map[string]string{"ns-rule-uid.yaml": "groups: []\n", "other.yaml": "groups: []\n"}},
		{name: "a key with a directory is refused", files: map[string]string{"../escape.yaml": "x"}, wantErr: `the key "../escape.yaml" is not a file name`},
		{name: "a hidden key is refused", files: map[string]string{"..data": "x"}, wantErr: `the key "..data" is not a file name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "prometheus-p-rulefiles-0")
			err := writeRuleDir(dir, tt.files)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("writeRuleDir error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for key, want := range tt.files {
				got, err := os.ReadFile(filepath.Join(dir, key))
				if err != nil || string(got) != want {
					t.Errorf("%s = %q, %v; want %q", key, got, err, want)
				}
			}
		})
	}
}
