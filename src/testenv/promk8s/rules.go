package promk8s

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ruleFiles are the operator's rule ConfigMaps written out as the files its
// Prometheus pod has them mounted as: one directory per ConfigMap, one file
// per key.
type ruleFiles struct {
	kube      kubernetes.Interface
	namespace string
	dir       string
	// written names the ConfigMaps and resource versions last written.
	written string
}

// fetch writes the ConfigMaps names when the set or any of them changed
// since the last call, and says whether it did.
func (r *ruleFiles) fetch(ctx context.Context, names []string) (changed bool, err error) {
	data := make(map[string]map[string]string, len(names))
	var version strings.Builder
	for _, name := range names {
		cm, err := r.kube.CoreV1().ConfigMaps(r.namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, fmt.Errorf("cannot read the operator's rule ConfigMap %s/%s: %w", r.namespace, name, err)
		}
		fmt.Fprintf(&version, "%s@%s ", name, cm.ResourceVersion)
		data[name] = cm.Data
	}
	if version.String() == r.written {
		return false, nil
	}
	if err := os.RemoveAll(r.dir); err != nil {
		return false, fmt.Errorf("cannot remove the old rule files: %w", err)
	}
	for name, files := range data {
		if err := writeRuleDir(filepath.Join(r.dir, name), files); err != nil {
			return false, fmt.Errorf("cannot write the rule ConfigMap %s/%s: %w", r.namespace, name, err)
		}
	}
	r.written = version.String()
	return true, nil
}

func writeRuleDir(dir string, files map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for key, content := range files {
		if key != filepath.Base(key) || strings.HasPrefix(key, ".") {
			return fmt.Errorf("the key %q is not a file name", key)
		}
		if err := os.WriteFile(filepath.Join(dir, key), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}
