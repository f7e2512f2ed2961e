package charts

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite the chart README's values table from values.yaml")

const (
	readmeBegin = "<!-- values:begin (generated from values.yaml by `go test ./charts -run TestREADME -update`; do not edit) -->"
	readmeEnd   = "<!-- values:end -->"
)

// valueRow is one documented value.
type valueRow struct {
	key, typ, def, desc string
	path                []string
}

// valuesDoc walks values.yaml and returns a row for every leaf value, and
// the keys (also non-leaf ones) that have no "# --" comment.
func valuesDoc(t *testing.T) (rows []valueRow, undocumented []string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	schema := loadSchema(t)
	// A map the schema leaves free-form (labels, selectors' matchLabels,
	// resources) is one value, not a set of documented keys.
	freeForm := func(path []string) bool {
		node := schema
		for _, seg := range path {
			props, _ := node["properties"].(map[string]any)
			next, ok := props[seg].(map[string]any)
			if !ok {
				return true
			}
			node = next
		}
		_, hasProps := node["properties"]
		return !hasProps
	}
	var walk func(n *yaml.Node, prefix []string)
	walk = func(n *yaml.Node, prefix []string) {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			path := append(slices.Clone(prefix), k.Value)
			key := strings.Join(path, ".")
			desc := docComment(k.HeadComment)
			if desc == "" {
				undocumented = append(undocumented, key)
			}
			if v.Kind == yaml.MappingNode && len(v.Content) > 0 && !freeForm(path) {
				walk(v, path)
				continue
			}
			var val any
			if err := v.Decode(&val); err != nil {
				t.Fatalf("%s: %v", key, err)
			}
			rows = append(rows, valueRow{key: key, typ: yamlType(v), def: jsonDefault(val), desc: desc, path: path})
		}
	}
	walk(doc.Content[0], nil)
	return rows, undocumented
}

// docComment returns the text of the "# --" comment block above a key.
func docComment(head string) string {
	lines := strings.Split(head, "\n")
	start := -1
	for i, l := range lines {
		if strings.HasPrefix(l, "# --") {
			start = i
		}
	}
	if start < 0 {
		return ""
	}
	var parts []string
	for i, l := range lines[start:] {
		l = strings.TrimPrefix(l, "#")
		if i == 0 {
			l = strings.TrimPrefix(l, " --")
		}
		parts = append(parts, strings.TrimSpace(l))
	}
	return strings.TrimSpace(strings.Join(parts, " "))
}

func yamlType(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "object"
	case yaml.SequenceNode:
		return "list"
	}
	switch n.Tag {
	case "!!int":
		return "int"
	case "!!float":
		return "float"
	case "!!bool":
		return "bool"
	}
	return "string"
}

func jsonDefault(v any) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Sprint(v)
	}
	return strings.TrimSpace(buf.String())
}

func valuesTable(rows []valueRow) string {
	esc := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
	var b strings.Builder
	b.WriteString("| Key | Type | Default | Description |\n|-----|------|---------|-------------|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| `%s` | %s | `%s` | %s |\n", r.key, r.typ, esc(r.def), esc(r.desc))
	}
	return b.String()
}

// The chart README lists every value with its comment and default; it is
// generated from values.yaml, so it cannot drift.
func TestREADME(t *testing.T) {
	rows, undocumented := valuesDoc(t)
	if len(undocumented) > 0 {
		t.Errorf("values without a \"# --\" comment: %v", undocumented)
	}
	path := filepath.Join(chartDir, "README.md")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	i, j := strings.Index(readme, readmeBegin), strings.Index(readme, readmeEnd)
	if i < 0 || j < i {
		t.Fatalf("%s lacks the markers %q ... %q", path, readmeBegin, readmeEnd)
	}
	want := readme[:i] + readmeBegin + "\n\n" + valuesTable(rows) + "\n" + readme[j:]
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if readme != want {
		t.Errorf("%s is out of date with values.yaml; run: go test ./charts -run TestREADME -update", path)
	}
}

// values.yaml and values.schema.json describe the same keys: every value is
// a schema property (or inside a free-form object of the schema), and every
// schema property has a default in values.yaml (or sits inside one).
func TestSchemaCoversValues(t *testing.T) {
	rows, _ := valuesDoc(t)
	schema := loadSchema(t)
	inSchema := func(path []string) bool {
		node := schema
		for _, seg := range path {
			props, _ := node["properties"].(map[string]any)
			if next, ok := props[seg].(map[string]any); ok {
				node = next
				continue
			}
			// Only a free-form object (no properties of its own) takes
			// keys the schema does not list.
			return props == nil && node["additionalProperties"] != false
		}
		return true
	}
	var schemaPaths [][]string
	var walk func(s map[string]any, prefix []string)
	walk = func(s map[string]any, prefix []string) {
		if s["description"] == nil && len(prefix) > 0 {
			t.Errorf("schema property %s has no description", strings.Join(prefix, "."))
		}
		props, _ := s["properties"].(map[string]any)
		if len(prefix) > 0 {
			schemaPaths = append(schemaPaths, prefix)
		}
		for k, v := range props {
			walk(v.(map[string]any), append(slices.Clone(prefix), k))
		}
	}
	walk(schema, nil)
	for _, r := range rows {
		if !inSchema(r.path) {
			t.Errorf("value %s is not in values.schema.json", r.key)
		}
	}
	hasPrefix := func(a, p []string) bool { return len(a) >= len(p) && slices.Equal(a[:len(p)], p) }
	for _, p := range schemaPaths {
		if p[0] == "global" {
			continue
		}
		covered := false
		for _, r := range rows {
			if hasPrefix(r.path, p) || hasPrefix(p, r.path) {
				covered = true
				break
			}
		}
		if !covered {
			t.Errorf("schema property %s has no default in values.yaml", strings.Join(p, "."))
		}
	}
}

func loadSchema(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	return schema
}
