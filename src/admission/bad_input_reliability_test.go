package admission

// Bad inputs of the catalogue in docs/reliability.md that the handler's
// own tests do not cover: every truncation of a review, deep nesting,
// unknown fields, subresources, hundreds of containers, content types and
// more annotation values.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestTruncatedReviews: every proper prefix of an opted-in pod's review is
// a 400 with a message, never an admission decision or a panic.
func TestTruncatedReviews(t *testing.T) {
	f := newFixture(t, nil)
	full := reviewJSON(t, semaphorePod("truncated", "2"), reviewOpts{})
	for n := range len(full) {
		rec := post(f.h, full[:n], "application/json")
		if rec.Code != http.StatusBadRequest || rec.Body.Len() == 0 {
			t.Fatalf("review cut at %d of %d bytes: %d %q, want 400 with a message", n, len(full), rec.Code, rec.Body.String())
		}
	}
	if got := held(t, f.sem, testNamespace+"/truncated", 2); got != 0 {
		t.Fatalf("truncated reviews took %d slots", got)
	}
	if rec := post(f.h, full, "application/json"); rec.Code != http.StatusOK {
		t.Fatalf("the whole review: %d %q", rec.Code, rec.Body.String())
	}
}

// editReview decodes a review, lets edit change it as a generic document,
// and encodes it again.
func editReview(t *testing.T, review []byte, edit func(doc map[string]any)) []byte {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(review, &doc); err != nil {
		t.Fatal(err)
	}
	edit(doc)
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func member(doc map[string]any, path ...string) map[string]any {
	m := doc
	for _, p := range path {
		m = m[p].(map[string]any)
	}
	return m
}

// nested is depth nested arrays; encoding/json refuses to write more than
// its limit, so a placeholder string is swapped for it after encoding.
func nested(depth int) string {
	return strings.Repeat("[", depth) + strings.Repeat("]", depth)
}

const deepPlaceholder = "deep-placeholder-0f0f"

// TestDeepNesting: nesting up to encoding/json's limit is read (and
// skipped), beyond it the review is refused, wherever it is.
func TestDeepNesting(t *testing.T) {
	f := newFixture(t, nil)
	cases := []struct {
		name  string
		path  []string
		depth int
		code  int
	}{
		{"in the review, shallow enough", nil, 9000, http.StatusOK},
		{"in the review, too deep", nil, 20000, http.StatusBadRequest},
		{"in the opted-in pod's spec, shallow enough", []string{"request", "object", "spec"}, 9000, http.StatusOK},
		{"in the opted-in pod's spec, too deep", []string{"request", "object", "spec"}, 20000, http.StatusBadRequest},
		{"in the opted-in pod's metadata, too deep", []string{"request", "object", "metadata"}, 20000, http.StatusBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := editReview(t, reviewJSON(t, basePod(), reviewOpts{}), func(doc map[string]any) {
				member(doc, tc.path...)["deep"] = deepPlaceholder
			})
			body = []byte(strings.Replace(string(body), `"`+deepPlaceholder+`"`, nested(tc.depth), 1))
			rec := post(f.h, body, "application/json")
			if rec.Code != tc.code {
				t.Fatalf("%d levels: %d %q, want %d", tc.depth, rec.Code, rec.Body.String(), tc.code)
			}
			if tc.code == http.StatusBadRequest && !strings.Contains(rec.Body.String(), "nested deeper than") {
				t.Fatalf("the refusal does not say why: %q", rec.Body.String())
			}
		})
	}
}

// TestUnknownFields: fields the webhook does not know (newer API versions,
// status, managed fields) are ignored everywhere, and the pod is injected
// as usual.
func TestUnknownFields(t *testing.T) {
	f := newFixture(t, nil)
	cases := []struct {
		name string
		path []string
	}{
		{"review", nil},
		{"request", []string{"request"}},
		{"object", []string{"request", "object"}},
		{"metadata", []string{"request", "object", "metadata"}},
		{"spec", []string{"request", "object", "spec"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := mustJSON(basePod())
			body := editReview(t, reviewOfRaw(t, raw, reviewOpts{}), func(doc map[string]any) {
				m := member(doc, tc.path...)
				m["futureField"] = map[string]any{"a": []any{1, "x", nil, true}}
				m["zzz"] = "ignored"
			})
			resp := admit(t, f.h, body)
			if !resp.Allowed || resp.Patch == nil {
				t.Fatalf("want the pod injected, got %+v", resp)
			}
			if _, _, n := sidecarOf(patched(t, raw, resp)); n != 1 {
				t.Fatalf("%d sidecars", n)
			}
		})
	}
	t.Run("container", func(t *testing.T) {
		p := basePod()
		raw := editReview(t, mustJSON(p), func(doc map[string]any) {
			c := member(doc, "spec")["containers"].([]any)[0].(map[string]any)
			c["resizePolicy"] = []any{map[string]any{"resourceName": "cpu"}}
		})
		resp := admit(t, f.h, reviewOfRaw(t, raw, reviewOpts{}))
		if !resp.Allowed || resp.Patch == nil {
			t.Fatalf("want the pod injected, got %+v", resp)
		}
	})
}

// TestSubresourcesAndOtherVersions: an opted-in pod under a subresource,
// another version or a differently spelt kind is not the webhook's.
func TestSubresourcesAndOtherVersions(t *testing.T) {
	f := newFixture(t, nil)
	cases := []struct {
		name string
		edit func(req map[string]any)
	}{
		{"pods/status", func(req map[string]any) { req["subResource"] = "status" }},
		{"pods/ephemeralcontainers", func(req map[string]any) { req["subResource"] = "ephemeralcontainers" }},
		{"pods/binding", func(req map[string]any) { req["subResource"] = "binding" }},
		{"version v2", func(req map[string]any) { req["kind"].(map[string]any)["version"] = "v2" }},
		{"kind pod in lower case", func(req map[string]any) { req["kind"].(map[string]any)["kind"] = "pod" }},
		{"kind null", func(req map[string]any) { req["kind"] = nil }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := editReview(t, reviewJSON(t, semaphorePod("sub", "1"), reviewOpts{}), func(doc map[string]any) {
				tc.edit(member(doc, "request"))
			})
			resp := admit(t, f.h, body)
			if !resp.Allowed || resp.Patch != nil || resp.Result != nil {
				t.Fatalf("want allowed untouched, got %+v", resp)
			}
		})
	}
	if got := held(t, f.sem, testNamespace+"/sub", 1); got != 0 {
		t.Fatalf("%d slots taken for requests that are not pod creations", got)
	}
}

// TestHundredsOfContainers: a pod with hundreds of containers and init
// containers gets one sidecar, its containers untouched; the checks on
// names and ports find the one offending container among them.
func TestHundredsOfContainers(t *testing.T) {
	f := newFixture(t, nil)
	big := func(edit func(p *corev1.Pod)) *corev1.Pod {
		p := basePod()
		for i := range 299 {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: "x",
				Ports: []corev1.ContainerPort{{ContainerPort: int32(10000 + i)}}})
		}
		for i := range 200 {
			p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: fmt.Sprintf("i%d", i), Image: "x"})
		}
		if edit != nil {
			edit(p)
		}
		return p
	}
	t.Run("injected once", func(t *testing.T) {
		raw := mustJSON(big(nil))
		resp := admit(t, f.h, reviewOfRaw(t, raw, reviewOpts{}))
		if !resp.Allowed {
			t.Fatalf("denied: %+v", resp.Result)
		}
		pod := patched(t, raw, resp)
		if _, init, n := sidecarOf(pod); n != 1 || init {
			t.Fatalf("%d sidecars (init %v)", n, init)
		}
		if len(pod.Spec.Containers) != 301 || pod.Spec.Containers[300].Name != ContainerName || len(pod.Spec.InitContainers) != 200 {
			t.Fatalf("%d containers (last %q), %d init containers", len(pod.Spec.Containers),
				pod.Spec.Containers[len(pod.Spec.Containers)-1].Name, len(pod.Spec.InitContainers))
		}
	})
	denials := []struct {
		name string
		edit func(p *corev1.Pod)
		want string
	}{
		{"the sidecar's name deep in the list", func(p *corev1.Pod) { p.Spec.Containers[250].Name = ContainerName },
			`container "prometheus-metrics-proxy" already exists`},
		{"the sidecar's name among init containers", func(p *corev1.Pod) { p.Spec.InitContainers[199].Name = ContainerName },
			`init container "prometheus-metrics-proxy" already exists`},
		{"the sidecar's port on the last container", func(p *corev1.Pod) { p.Spec.Containers[299].Ports[0].ContainerPort = 65532 },
			`container "c298" declares port 65532`},
		{"hostNetwork, the sidecar's port on an init container", func(p *corev1.Pod) {
			p.Spec.HostNetwork = true
			p.Spec.InitContainers[7].Ports = []corev1.ContainerPort{{ContainerPort: 65532, HostPort: 65532}}
		}, `container "i7" declares port 65532, which the injected metrics proxy listens on in the node's network (hostNetwork: true)`},
	}
	for _, tc := range denials {
		t.Run(tc.name, func(t *testing.T) {
			resp := admit(t, f.h, reviewJSON(t, big(tc.edit), reviewOpts{}))
			if resp.Allowed || resp.Result == nil || resp.Result.Code != 400 || !strings.Contains(resp.Result.Message, tc.want) {
				t.Fatalf("want a 400 denial containing %q, got %+v", tc.want, resp.Result)
			}
		})
	}
	t.Run("a host port of the sidecar's number outside hostNetwork", func(t *testing.T) {
		// The host port is the node's, the sidecar listens in the pod's
		// network namespace: no clash.
		p := basePod()
		p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{ContainerPort: 8081, HostPort: 65532})
		if resp := admit(t, f.h, reviewJSON(t, p, reviewOpts{})); !resp.Allowed {
			t.Fatalf("denied: %+v", resp.Result)
		}
	})
}

// TestContentTypes: only application/json, with parameters and in any
// letter case, is read.
func TestContentTypes(t *testing.T) {
	f := newFixture(t, nil)
	body := reviewJSON(t, basePod(), reviewOpts{})
	cases := []struct {
		contentType string
		code        int
	}{
		{"application/json", http.StatusOK},
		{"application/json; charset=utf-8", http.StatusOK},
		{"Application/JSON", http.StatusOK},
		{"application/json;", http.StatusOK},
		{"application/jsonx", http.StatusUnsupportedMediaType},
		{"application/json-patch+json", http.StatusUnsupportedMediaType},
		{"application/merge-patch+json", http.StatusUnsupportedMediaType},
		{"application/vnd.kubernetes.protobuf", http.StatusUnsupportedMediaType},
		{"application/cbor", http.StatusUnsupportedMediaType},
		{"text/json", http.StatusUnsupportedMediaType},
		{"application/x-www-form-urlencoded", http.StatusUnsupportedMediaType},
		{" application/json", http.StatusUnsupportedMediaType},
	}
	for _, tc := range cases {
		t.Run(tc.contentType, func(t *testing.T) {
			if rec := post(f.h, body, tc.contentType); rec.Code != tc.code {
				t.Fatalf("got %d %q, want %d", rec.Code, rec.Body.String(), tc.code)
			}
		})
	}
}

// TestMoreBadAnnotationValues adds the values TestDenials leaves out; every
// one is a 400 that names the annotation and quotes the value.
func TestMoreBadAnnotationValues(t *testing.T) {
	f := newFixture(t, nil)
	cases := []struct {
		annotation, value string
	}{
		{AnnotationSemaphoreSize, " 3"},
		{AnnotationSemaphoreSize, "3 "},
		{AnnotationSemaphoreSize, "3.0"},
		{AnnotationSemaphoreSize, "1e3"},
		{AnnotationSemaphoreSize, ""},
		{AnnotationSemaphoreSize, "99999999999999999999"},
		{AnnotationSemaphoreSize, "٣"},
		{AnnotationStartupTimeout, "1h0m1s"},
		{AnnotationStartupTimeout, "999ms"},
		{AnnotationStartupTimeout, ""},
		{AnnotationStartupTimeout, "5 m"},
		{AnnotationStartupTimeout, "9223372036854775807ns"},
		{AnnotationSemaphoreKey, "ключ"},
		{AnnotationSemaphoreKey, "a b"},
		{AnnotationSemaphoreKey, "-a"},
		{AnnotationPort, "8080 "},
		{AnnotationPort, "-1"},
		{AnnotationPort, "0x1f90"},
		{AnnotationPort, "metrics-port-name-too-long"},
		{AnnotationPath, "/" + strings.Repeat("a", 1024)},
		{AnnotationPath, "/a\tb"},
		{AnnotationPath, "/a\x00b"},
		{AnnotationPath, "http://elsewhere/metrics"},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s=%q", tc.annotation, tc.value), func(t *testing.T) {
			p := semaphorePod("more", "3")
			p.Annotations[tc.annotation] = tc.value
			resp := admit(t, f.h, reviewJSON(t, p, reviewOpts{}))
			if resp.Allowed || resp.Result == nil || resp.Result.Code != 400 {
				t.Fatalf("want a 400 denial, got %+v", resp)
			}
			if want := fmt.Sprintf("%s %q", tc.annotation, tc.value); !strings.Contains(resp.Result.Message, want) {
				t.Fatalf("message %q does not contain %s", resp.Result.Message, want)
			}
		})
	}
	if got := held(t, f.sem, testNamespace+"/more", 3); got != 0 {
		t.Fatalf("denied pods took %d slots", got)
	}
}
