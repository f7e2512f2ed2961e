package images

import (
	"slices"
	"strings"
	"testing"
)

func TestProjectRefs(t *testing.T) {
	chart := Chart{AppVersion: "0.1.0", ImageRepository: "ghcr.io/o/p"}
	tests := []struct {
		name    string
		opts    Options
		want    []string
		wantErr string
	}{
		{"appVersion alone", Options{Version: "0.1.0"}, []string{"ghcr.io/o/p:0.1.0"}, ""},
		{"appVersion and another version", Options{Version: "v2"}, []string{"ghcr.io/o/p:0.1.0", "ghcr.io/o/p:v2"}, ""},
		{"a version that is no tag", Options{Version: "a+b"}, []string{"ghcr.io/o/p:0.1.0"}, ""},
		{"tags replace both", Options{Version: "v2", Tags: []string{"0.0.1-previous"}}, []string{"ghcr.io/o/p:0.0.1-previous"}, ""},
		{"an invalid tag", Options{Tags: []string{"-x"}}, nil, `tag "-x" is not a valid tag`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := projectRefs(chart, tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}
