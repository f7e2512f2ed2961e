package admission

import (
	"bytes"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
)

// FuzzReview sends arbitrary bodies: the handler never panics and answers
// either an HTTP error or a well-formed AdmissionReview that echoes the uid.
func FuzzReview(f *testing.F) {
	fx := newFixture(f, nil)
	for _, seed := range [][]byte{
		[]byte(`{"request":{"uid":"a","kind":{"kind":"Pod","version":"v1"},"operation":"CREATE","object":{"metadata":{"annotations":{"` + AnnotationOptIn + `":"true"}}}}}`),
		[]byte(`{"request":{"uid":"a\u0022b","operation":"CREATE","object":[]}}`),
		[]byte(`{"request":{"uid":"a","kind":{"kind":"Pod","version":"v1"},"operation":"CREATE","object":{"metadata":null}}}`),
		[]byte(`{"request":{"uid":1}}`),
		[]byte(`{"apiVersion":"admission.k8s.io/v1","request":{"uid":"x","dryRun":"yes"}}`),
		[]byte(`not json`),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := post(fx.h, body, "application/json")
		switch rec.Code {
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			return
		case http.StatusOK:
		default:
			t.Fatalf("status %d", rec.Code)
		}
		var in, out admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil {
			t.Fatalf("answer %q does not decode: %v", rec.Body.String(), err)
		}
		if err := json.Unmarshal(body, &in); err == nil && in.Request != nil && in.Request.UID != out.Response.UID {
			t.Fatalf("uid %q echoed as %q", in.Request.UID, out.Response.UID)
		}
	})
}

// FuzzPod is the patch property: for any pod, the handler never panics, what
// it reads of a pod the API server could send is what corev1.Pod holds, and
// when it patches, the patched pod decodes, has exactly one sidecar, the
// port annotation rewritten, and every original container untouched.
func FuzzPod(f *testing.F) {
	fx := newFixture(f, nil)
	native := newFixtureOn(f, fx.cluster, func(c *Config) { c.Sidecar.Native = true })
	seeds := []*corev1.Pod{basePod(), semaphorePod("fuzz", "1024")}
	p := basePod()
	p.Annotations = map[string]string{AnnotationOptIn: "true", "a/b~c": "x"}
	p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{Name: "metrics", ContainerPort: 9000})
	p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "busybox"}}
	seeds = append(seeds, p)
	p = basePod()
	p.Spec.HostNetwork = true
	p.Spec.TerminationGracePeriodSeconds = ptr(int64(7))
	seeds = append(seeds, p)
	for i, s := range seeds {
		f.Add(mustJSON(s), i%2 == 0, i%3 == 0)
	}
	f.Add([]byte(`{"metadata":{"annotations":{"`+AnnotationOptIn+`":"true","prometheus.io/port":"1"}},"spec":{"containers":null}}`), false, false)
	f.Add([]byte(`{"metadata":{"annotations":{"`+AnnotationOptIn+`":"true","prometheus.io/port":"1"}}}`), false, true)

	f.Fuzz(func(t *testing.T, object []byte, dryRun, useNative bool) {
		if !json.Valid(object) {
			return
		}
		h := fx.h
		if useNative {
			h = native.h
		}
		rec := post(h, reviewOfRaw(t, object, reviewOpts{dryRun: dryRun}), "application/json")
		if rec.Code != http.StatusOK {
			t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
		}
		var out admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatalf("answer does not decode: %v", err)
		}
		resp := out.Response
		if canonical(object) {
			agreesWithPod(t, object)
			if !resp.Allowed && resp.Result != nil && strings.Contains(resp.Result.Message, "could not be decoded") {
				t.Fatalf("a pod the API server could send was refused: %s", resp.Result.Message)
			}
		}
		if resp.Patch == nil {
			return
		}
		if !resp.Allowed {
			t.Fatal("a denial with a patch")
		}
		if !canonical(object) {
			// Only pods the API server could have sent (its own encoding
			// of a corev1.Pod: exact field names, no duplicates, no
			// unknown fields) are held to the property: the handler
			// matches member names exactly, this test's encoding/json
			// does not, and the two would disagree on the rest. The
			// handler must still not panic on it.
			return
		}
		pod := patched(t, object, resp)
		_, isInit, n := sidecarOf(pod)
		if n != 1 || isInit != useNative {
			t.Fatalf("want exactly one sidecar (init %v), got %d (init %v)", useNative, n, isInit)
		}
		if pod.Annotations[AnnotationPort] != "65532" || pod.Annotations[AnnotationInjected] != "true" {
			t.Fatalf("annotations %v", pod.Annotations)
		}
		var before, after struct {
			Spec struct {
				Containers     []json.RawMessage `json:"containers"`
				InitContainers []json.RawMessage `json:"initContainers"`
			} `json:"spec"`
		}
		patchedRaw, _ := applyPatch(object, resp.Patch)
		if json.Unmarshal(object, &before) != nil || json.Unmarshal(patchedRaw, &after) != nil {
			t.Fatal("containers do not decode")
		}
		afterContainers, afterInit := after.Spec.Containers, after.Spec.InitContainers
		if useNative {
			afterInit = afterInit[1:]
			afterContainers = withoutInjectedPreStop(before.Spec.Containers, afterContainers)
		} else {
			afterContainers = afterContainers[:len(afterContainers)-1]
		}
		if !sameJSON(before.Spec.Containers, afterContainers) || !sameJSON(before.Spec.InitContainers, afterInit) {
			t.Fatalf("original containers changed:\nbefore %s %s\nafter  %s %s", before.Spec.Containers, before.Spec.InitContainers,
				after.Spec.Containers, after.Spec.InitContainers)
		}
	})
}

// withoutInjectedPreStop undoes the preStop hook a native sidecar's patch
// gives app containers without one, so that the rest can be compared.
func withoutInjectedPreStop(before, after []json.RawMessage) []json.RawMessage {
	if len(before) != len(after) {
		return after
	}
	hook := map[string]any{"httpGet": map[string]any{"path": TerminatingPath, "port": float64(65532)}}
	out := make([]json.RawMessage, len(after))
	for i := range after {
		out[i] = after[i]
		var b, a map[string]any
		if json.Unmarshal(before[i], &b) != nil || json.Unmarshal(after[i], &a) != nil || a == nil {
			continue
		}
		lc, _ := a["lifecycle"].(map[string]any)
		if lc == nil || !reflect.DeepEqual(lc["preStop"], hook) {
			continue
		}
		if bl, _ := b["lifecycle"].(map[string]any); bl != nil && bl["preStop"] != nil {
			continue
		}
		delete(lc, "preStop")
		if _, had := b["lifecycle"]; !had && len(lc) == 0 {
			delete(a, "lifecycle")
		}
		out[i], _ = json.Marshal(a)
	}
	return out
}

func sameJSON(a, b []json.RawMessage) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		var x, y any
		if json.Unmarshal(a[i], &x) != nil || json.Unmarshal(b[i], &y) != nil {
			return false
		}
		xb, _ := json.Marshal(x)
		yb, _ := json.Marshal(y)
		if !bytes.Equal(xb, yb) {
			return false
		}
	}
	return true
}

// canonical reports whether object is what encoding a corev1.Pod gives, up
// to member order and white space.
func canonical(object []byte) bool {
	var pod corev1.Pod
	if json.Unmarshal(object, &pod) != nil {
		return false
	}
	again, err := json.Marshal(&pod)
	if err != nil {
		return false
	}
	var a, b any
	if json.Unmarshal(object, &a) != nil || json.Unmarshal(again, &b) != nil {
		return false
	}
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}
