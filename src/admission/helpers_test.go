package admission

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
)

const (
	testNamespace = "team-a"
	testCA        = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n"
	testLeaseURL  = "https://pmph.pmph-system.svc:443"
)

func testSidecar() Sidecar {
	return Sidecar{
		Image: "example.org/pmph:test", PullPolicy: corev1.PullIfNotPresent, Command: []string{SidecarCommand}, Port: 65532,
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("32Mi")},
		},
		ScrapeInterval: time.Minute, LeaseURL: testLeaseURL,
	}
}

type fixture struct {
	h       *Handler
	sem     *semaphore.Client
	cluster *redistest.Cluster
	logs    *lockedWriter
}

// newFixture builds a handler over a fresh 3-node Redis cluster; edit
// changes the config before the handler is built.
func newFixture(t testing.TB, edit func(*Config)) *fixture {
	t.Helper()
	cluster := redistest.StartT(t, 3)
	return newFixtureOn(t, cluster, edit)
}

func newFixtureOn(t testing.TB, cluster *redistest.Cluster, edit func(*Config)) *fixture {
	t.Helper()
	// A generous node timeout: these tests check decisions, not timeouts,
	// and the race detector on 2 busy cores slows the first dials.
	sem, err := semaphore.New(semaphore.Config{Addrs: cluster.Addrs(), Password: cluster.Password, NodeTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sem.Close() })
	logs := &lockedWriter{w: &bytes.Buffer{}}
	cfg := Config{
		Sidecar:   testSidecar(),
		Semaphore: sem,
		CA:        func() []byte { return []byte(testCA) },
		Logger:    zerolog.New(logs).Level(zerolog.InfoLevel),
		Metrics:   NewMetrics(),
	}
	if edit != nil {
		edit(&cfg)
	}
	h, err := NewHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{h: h, sem: sem, cluster: cluster, logs: logs}
}

// lockedWriter serialises log writes from concurrent handlers.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// basePod is an opted-in pod with one container serving metrics on 8080.
func basePod() *corev1.Pod {
	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "app-",
			Annotations: map[string]string{
				AnnotationOptIn: "true",
				AnnotationPort:  "8080",
			},
		},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Image: "example.org/app:1",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
		}}},
	}
}

type reviewOpts struct {
	operation admissionv1.Operation
	kind      metav1.GroupVersionKind
	namespace string
	dryRun    bool
	uid       string
}

func reviewJSON(t testing.TB, obj runtime.Object, o reviewOpts) []byte {
	t.Helper()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return reviewOfRaw(t, raw, o)
}

func reviewOfRaw(t testing.TB, raw []byte, o reviewOpts) []byte {
	t.Helper()
	if o.operation == "" {
		o.operation = admissionv1.Create
	}
	if o.kind.Kind == "" {
		o.kind = metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}
	}
	if o.namespace == "" {
		o.namespace = testNamespace
	}
	if o.uid == "" {
		o.uid = "0d6f3c2e-0000-4000-8000-00000000000" + strconv.Itoa(len(raw)%10)
	}
	dry := o.dryRun
	rv := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID(o.uid),
			Kind:      o.kind,
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Operation: o.operation,
			Namespace: o.namespace,
			Object:    runtime.RawExtension{Raw: raw},
			DryRun:    &dry,
		},
	}
	b, err := json.Marshal(rv)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// post sends a review through ServeHTTP and returns the recorder.
func post(h http.Handler, body []byte, contentType string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/mutate?timeout=5s", bytes.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// admit sends a review and decodes the answer, checking the envelope.
func admit(t testing.TB, h http.Handler, body []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	rec := post(h, body, "application/json")
	if rec.Code != http.StatusOK {
		t.Fatalf("HTTP %d: %s", rec.Code, rec.Body.String())
	}
	var out admissionv1.AdmissionReview
	dec := json.NewDecoder(rec.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("decoding the answer %q: %v", rec.Body.String(), err)
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || out.Response == nil {
		t.Fatalf("answer envelope is wrong: %+v", out)
	}
	var in admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &in); err == nil && in.Request != nil && out.Response.UID != in.Request.UID {
		t.Fatalf("uid %q was not echoed: got %q", in.Request.UID, out.Response.UID)
	}
	return out.Response
}

// patched applies the answer's patch to the pod and decodes the result.
func patched(t testing.TB, raw []byte, resp *admissionv1.AdmissionResponse) *corev1.Pod {
	t.Helper()
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patch type is %v, want JSONPatch", resp.PatchType)
	}
	out, err := applyPatch(raw, resp.Patch)
	if err != nil {
		t.Fatalf("applying the patch %s: %v", resp.Patch, err)
	}
	var pod corev1.Pod
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&pod); err != nil {
		t.Fatalf("the patched pod does not decode: %v\n%s", err, out)
	}
	return &pod
}

func sidecarOf(pod *corev1.Pod) (c *corev1.Container, init bool, count int) {
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == ContainerName {
			c, init = &pod.Spec.InitContainers[i], true
			count++
		}
	}
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == ContainerName {
			c = &pod.Spec.Containers[i]
			count++
		}
	}
	return c, init, count
}

func envOf(c *corev1.Container) map[string]string {
	m := map[string]string{}
	for _, e := range c.Env {
		m[e.Name] = e.Value
	}
	return m
}

// applyPatch is a small RFC 6902 applier (add, remove, replace, test) over
// generic JSON, enough to check the webhook's patches independently of the
// code that wrote them.
func applyPatch(doc, patch []byte) ([]byte, error) {
	var root any
	if err := json.Unmarshal(doc, &root); err != nil {
		return nil, fmt.Errorf("document: %w", err)
	}
	var ops []struct {
		Op    string          `json:"op"`
		Path  string          `json:"path"`
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(patch, &ops); err != nil {
		return nil, fmt.Errorf("patch: %w", err)
	}
	for i, op := range ops {
		var value any
		if op.Op == "add" || op.Op == "replace" || op.Op == "test" {
			if op.Value == nil {
				return nil, fmt.Errorf("op %d: no value", i)
			}
			if err := json.Unmarshal(op.Value, &value); err != nil {
				return nil, fmt.Errorf("op %d value: %w", i, err)
			}
		}
		var err error
		root, err = applyOp(root, op.Op, op.Path, value)
		if err != nil {
			return nil, fmt.Errorf("op %d (%s %s): %w", i, op.Op, op.Path, err)
		}
	}
	return json.Marshal(root)
}

func applyOp(root any, op, pointer string, value any) (any, error) {
	if pointer == "" {
		switch op {
		case "add", "replace":
			return value, nil
		}
		return nil, fmt.Errorf("op %s on the root is not supported", op)
	}
	if !strings.HasPrefix(pointer, "/") {
		return nil, fmt.Errorf("pointer %q does not start with /", pointer)
	}
	tokens := strings.Split(pointer[1:], "/")
	for i, tok := range tokens {
		tokens[i] = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
	}
	parent := root
	for _, tok := range tokens[:len(tokens)-1] {
		switch p := parent.(type) {
		case map[string]any:
			next, ok := p[tok]
			if !ok {
				return nil, fmt.Errorf("member %q does not exist", tok)
			}
			parent = next
		case []any:
			idx, err := strconv.Atoi(tok)
			if err != nil || idx < 0 || idx >= len(p) {
				return nil, fmt.Errorf("index %q is out of range", tok)
			}
			parent = p[idx]
		default:
			return nil, fmt.Errorf("cannot descend into %T at %q", parent, tok)
		}
	}
	last := tokens[len(tokens)-1]
	switch p := parent.(type) {
	case map[string]any:
		_, exists := p[last]
		switch op {
		case "add":
			p[last] = value
		case "replace":
			if !exists {
				return nil, fmt.Errorf("member %q does not exist", last)
			}
			p[last] = value
		case "remove":
			if !exists {
				return nil, fmt.Errorf("member %q does not exist", last)
			}
			delete(p, last)
		case "test":
			a, _ := json.Marshal(p[last])
			b, _ := json.Marshal(value)
			if !bytes.Equal(a, b) {
				return nil, fmt.Errorf("test failed")
			}
		default:
			return nil, fmt.Errorf("op %q is not supported", op)
		}
		return root, nil
	case []any:
		// Arrays are replaced in their parent: rebuild and store back.
		var out []any
		switch {
		case op == "add" && last == "-":
			out = append(p, value)
		case op == "add":
			idx, err := strconv.Atoi(last)
			if err != nil || idx < 0 || idx > len(p) {
				return nil, fmt.Errorf("index %q is out of range", last)
			}
			out = append(append(append([]any{}, p[:idx]...), value), p[idx:]...)
		case op == "replace" || op == "remove":
			idx, err := strconv.Atoi(last)
			if err != nil || idx < 0 || idx >= len(p) {
				return nil, fmt.Errorf("index %q is out of range", last)
			}
			if op == "replace" {
				out = append([]any{}, p...)
				out[idx] = value
			} else {
				out = append(append([]any{}, p[:idx]...), p[idx+1:]...)
			}
		default:
			return nil, fmt.Errorf("op %q on an array is not supported", op)
		}
		parentPointer := "/" + strings.Join(escapeTokens(tokens[:len(tokens)-1]), "/")
		if len(tokens) == 1 {
			parentPointer = ""
		}
		return applyOp(root, "replace", parentPointer, out)
	default:
		return nil, fmt.Errorf("cannot apply to %T", parent)
	}
}

func escapeTokens(tokens []string) []string {
	out := make([]string, len(tokens))
	for i, t := range tokens {
		out[i] = strings.ReplaceAll(strings.ReplaceAll(t, "~", "~0"), "/", "~1")
	}
	return out
}

// held counts the slots of a semaphore owned on a quorum.
func held(t testing.TB, sem *semaphore.Client, name string, size int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := sem.Inspect(ctx, name, size)
	if err != nil {
		t.Fatalf("inspecting %s: %v", name, err)
	}
	return st.Held()
}
