package images_test

import (
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
)

// dockerfile is what the final stage of the Dockerfile declares, and the
// build stage's go build command.
type dockerfile struct {
	entrypoint []string
	user       string
	labels     map[string]string
	// copies maps each /out/ file of the build stage to its path in the image.
	copies  map[string]string
	goBuild string
}

// parseDockerfile reads the instructions this project's Dockerfile uses,
// with ARG references replaced by args. No Docker engine runs here: the kind
// CI job builds the real Dockerfile; this compares what it declares.
func parseDockerfile(t *testing.T, path string, args map[string]string) dockerfile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d := dockerfile{labels: map[string]string{}, copies: map[string]string{}}
	for _, inst := range instructions(string(data)) {
		keyword, rest, _ := strings.Cut(inst, " ")
		rest = expand(strings.TrimSpace(rest), args)
		switch strings.ToUpper(keyword) {
		case "FROM":
			// Only the last stage's metadata ends up in the image.
			d.labels, d.user, d.entrypoint = map[string]string{}, "", nil
		case "LABEL":
			maps.Copy(d.labels, parseLabels(t, rest))
		case "USER":
			d.user = rest
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(rest), &d.entrypoint); err != nil {
				t.Fatalf("ENTRYPOINT %s is not the JSON form: %v", rest, err)
			}
		case "COPY":
			f := strings.Fields(rest)
			if len(f) == 0 || f[0] != "--from=build" {
				continue
			}
			if len(f) != 3 || !strings.HasPrefix(f[1], "/out/") {
				t.Fatalf("COPY %s: the test reads only COPY --from=build /out/FILE DEST", rest)
			}
			d.copies[strings.TrimPrefix(f[1], "/out/")] = f[2]
		case "RUN":
			if strings.Contains(rest, "go build") {
				d.goBuild = withoutMounts(rest)
			}
		}
	}
	return d
}

// instructions joins continuation lines and drops comments and blank lines.
func instructions(src string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if body, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(trimmed)
		if s := strings.TrimSpace(cur.String()); s != "" {
			out = append(out, s)
		}
		cur.Reset()
	}
	return out
}

func expand(s string, args map[string]string) string {
	return os.Expand(s, func(name string) string {
		if v, ok := args[name]; ok {
			return v
		}
		return "$" + name
	})
}

// parseLabels reads key="value" pairs.
func parseLabels(t *testing.T, s string) map[string]string {
	t.Helper()
	labels := map[string]string{}
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		key, rest, ok := strings.Cut(s, "=")
		if !ok || !strings.HasPrefix(rest, `"`) {
			t.Fatalf("LABEL %q is not key=\"value\"", s)
		}
		value, err := strconv.QuotedPrefix(rest)
		if err != nil {
			t.Fatalf("LABEL %s: %v", key, err)
		}
		labels[key], _ = strconv.Unquote(value)
		s = rest[len(value):]
	}
	return labels
}

func withoutMounts(run string) string {
	var kept []string
	for _, f := range strings.Fields(run) {
		if !strings.HasPrefix(f, "--mount=") {
			kept = append(kept, f)
		}
	}
	return strings.Join(kept, " ")
}

// TestDockerfileAgreesWithImage builds the project's binaries with the
// Dockerfile's own go build command and compares what the Dockerfile declares
// (entrypoint, user, labels, binary paths) and what its binaries print for
// `version` with the image this package builds.
func TestDockerfileAgreesWithImage(t *testing.T) {
	root := repoRoot(t)
	out := t.TempDir()
	args := map[string]string{
		"VERSION": testVersion, "REVISION": testRevision,
		"TARGETOS": "linux", "TARGETARCH": runtime.GOARCH,
	}
	d := parseDockerfile(t, filepath.Join(root, "Dockerfile"), args)
	if d.goBuild == "" || len(d.copies) == 0 {
		t.Fatalf("the Dockerfile has no RUN with go build or no COPY --from=build /out/...: %+v", d)
	}
	b := sharedBuild(t, images.NameProject)
	cfg := configOf(t, b.Image)

	t.Run("entrypoint", func(t *testing.T) {
		if !slices.Equal(d.entrypoint, cfg.Config.Entrypoint) {
			t.Errorf("Dockerfile ENTRYPOINT %q, image %q", d.entrypoint, cfg.Config.Entrypoint)
		}
	})
	t.Run("user", func(t *testing.T) {
		if d.user != cfg.Config.User {
			t.Errorf("Dockerfile USER %q, image %q", d.user, cfg.Config.User)
		}
	})
	t.Run("labels", func(t *testing.T) {
		if !maps.Equal(d.labels, cfg.Config.Labels) {
			t.Errorf("Dockerfile LABEL %v, image %v", d.labels, cfg.Config.Labels)
		}
	})
	t.Run("binaries", func(t *testing.T) {
		var want, got []string
		for _, dst := range d.copies {
			want = append(want, dst)
		}
		for _, bin := range images.DefaultBinaries() {
			got = append(got, bin.Path)
		}
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(want, got) {
			t.Errorf("Dockerfile copies binaries to %q, the image has %q", want, got)
		}
	})
	t.Run("version output", func(t *testing.T) {
		cmd := exec.Command("sh", "-ec", strings.ReplaceAll(d.goBuild, "/out/", out+"/"))
		cmd.Dir = root
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("the Dockerfile's build command %q failed: %v\n%s", d.goBuild, err, o)
		}
		dir := extract(t, b.Image)
		for file, dst := range d.copies {
			fromDockerfile := runVersion(t, filepath.Join(out, file))
			fromImage := runVersion(t, filepath.Join(dir, dst))
			if fromDockerfile != fromImage {
				t.Errorf("%s version: the Dockerfile's build prints %q, the image's %q", dst, fromDockerfile, fromImage)
			}
			if !strings.Contains(fromImage, testVersion) {
				t.Errorf("%s version prints %q, without the stamped version %s", dst, fromImage, testVersion)
			}
		}
	})
}

func runVersion(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s version: %v\n%s", bin, err, out)
	}
	return string(out)
}
