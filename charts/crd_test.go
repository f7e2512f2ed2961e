package charts

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

type crdVersion struct {
	validator  validation.SchemaValidator
	structural *structuralschema.Structural
}

// loadCRDs takes the CRDs of cert-manager, Istio and the Prometheus Operator
// from their pinned Go modules (hack/crds.sh, the same files the e2e tests
// apply) and indexes their schemas by group/version/kind.
func loadCRDs(t *testing.T) map[string]crdVersion {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command(filepath.Join("..", "hack", "crds.sh"), dir).CombinedOutput()
	if err != nil {
		t.Fatalf("hack/crds.sh: %v\n%s", err, out)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	index := map[string]crdVersion{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
		for {
			var crd apiextensionsv1.CustomResourceDefinition
			if err := dec.Decode(&crd); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if crd.Kind != "CustomResourceDefinition" {
				continue
			}
			for _, v := range crd.Spec.Versions {
				if !v.Served || v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
					continue
				}
				var internal apiextensions.JSONSchemaProps
				if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v.Schema.OpenAPIV3Schema, &internal, nil); err != nil {
					t.Fatal(err)
				}
				validator, _, err := validation.NewSchemaValidator(&internal)
				if err != nil {
					t.Fatalf("%s %s: %v", crd.Name, v.Name, err)
				}
				structural, err := structuralschema.NewStructural(&internal)
				if err != nil {
					t.Fatalf("%s %s: %v", crd.Name, v.Name, err)
				}
				index[crd.Spec.Group+"/"+v.Name+"/"+crd.Spec.Names.Kind] = crdVersion{validator, structural}
			}
		}
	}
	if len(index) == 0 {
		t.Fatal("no CRDs loaded")
	}
	return index
}

// Every custom resource the chart renders (cert-manager, Istio, Prometheus
// Operator) is of a served version and valid against the real CRD schema,
// with no field the API server would prune.
func TestCustomResourcesMatchCRDs(t *testing.T) {
	crds := loadCRDs(t)
	cases := []renderOpts{
		{values: "istio: {enabled: true, sidecar: {enabled: true, extraEgressHosts: [monitoring/prometheus.monitoring.svc.cluster.local]}, metricsPortMtlsMode: PERMISSIVE}\n" +
			"serviceMonitor: {enabled: true, labels: {release: kps}, relabelings: [{action: replace, targetLabel: team, replacement: platform}]}\n" +
			"prometheusRule: {enabled: true, alertLabels: {team: platform}}", apiVersions: []string{monitoringAPI}},
		{values: "redis: {enabled: false}\nexternalRedis: {addresses: ['10.0.0.1:6379', 'b.example:6380', 'c.example:6379'], password: p}\nistio: {enabled: true}"},
		{values: "certManager: {issuerRef: {name: corp-ca, kind: ClusterIssuer, group: cert-manager.io}}"},
	}
	for _, f := range ciValuesFiles(t) {
		cases = append(cases, renderOpts{valuesFile: f, apiVersions: []string{monitoringAPI}})
	}
	checked := map[string]bool{}
	for _, o := range cases {
		r := mustRender(t, o)
		for _, obj := range r.Objects {
			group := strings.SplitN(obj.APIVersion, "/", 2)[0]
			if !strings.Contains(obj.APIVersion, "/") || !strings.Contains(group, ".") || strings.HasSuffix(group, ".k8s.io") {
				continue // core and built-in APIs: decoded strictly elsewhere
			}
			crd, ok := crds[obj.APIVersion+"/"+obj.Kind]
			if !ok {
				t.Errorf("%s: %s is not a served version of any CRD", obj, obj.APIVersion)
				continue
			}
			var u map[string]any
			if err := json.Unmarshal(obj.JSON, &u); err != nil {
				t.Fatal(err)
			}
			if errs := validation.ValidateCustomResource(field.NewPath(""), u, crd.validator); len(errs) > 0 {
				t.Errorf("%s (%s, values %q): %v", obj, o.valuesFile, o.values, errs.ToAggregate())
			}
			if pruned := pruning.PruneWithOptions(u, crd.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true}); len(pruned) > 0 {
				t.Errorf("%s: fields unknown to the CRD: %v", obj, pruned)
			}
			checked[obj.Kind] = true
		}
	}
	for _, k := range []string{"Certificate", "Issuer", "PeerAuthentication", "ServiceEntry", "Sidecar", "ServiceMonitor", "PrometheusRule"} {
		if !checked[k] {
			t.Errorf("no %s was checked", k)
		}
	}
}
