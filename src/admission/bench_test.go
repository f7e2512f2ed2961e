package admission

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// paddedPod grows a pod with env vars, the way real pods get big, until its
// JSON is about size bytes.
func paddedPod(p *corev1.Pod, size int) []byte {
	for i := 0; ; i++ {
		raw := mustJSON(p)
		if len(raw) >= size {
			return raw
		}
		p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, corev1.EnvVar{
			Name: fmt.Sprintf("SETTING_%04d", i), Value: "some-configuration-value-of-medium-length"})
	}
}

// discard is a ResponseWriter that keeps nothing, so that the benchmark
// measures the handler.
type discard struct {
	header http.Header
	n      int
}

func (d *discard) Header() http.Header         { return d.header }
func (d *discard) WriteHeader(int)             {}
func (d *discard) Write(p []byte) (int, error) { d.n += len(p); return len(p), nil }

type body struct{ bytes.Reader }

func (*body) Close() error { return nil }

func BenchmarkHandler(b *testing.B) {
	fx := newFixture(b, nil)
	notAnnotated := func() *corev1.Pod {
		p := basePod()
		p.Annotations = map[string]string{"app.kubernetes.io/name": "app"}
		return p
	}
	for _, size := range []int{2 << 10, 64 << 10} {
		sizeName := strconv.Itoa(size>>10) + "KiB"
		b.Run("not-annotated/"+sizeName, func(b *testing.B) {
			benchReview(b, fx.h, reviewOfRaw(b, paddedPod(notAnnotated(), size), reviewOpts{}), nil)
		})
		b.Run("annotated/"+sizeName, func(b *testing.B) {
			benchReview(b, fx.h, reviewOfRaw(b, paddedPod(basePod(), size), reviewOpts{}), nil)
		})
		b.Run("semaphore/"+sizeName, func(b *testing.B) {
			// A fresh key per review (as with unique keys in the load
			// test): every review takes a slot on 3 real nodes, and the
			// slots expire on their own after the 1 s startup timeout.
			p := semaphorePod("k000000000", "10")
			p.Annotations[AnnotationStartupTimeout] = "1s"
			review := reviewOfRaw(b, paddedPod(p, size), reviewOpts{})
			at := bytes.Index(review, []byte(`"k000000000"`)) + 1
			n := 0
			benchReview(b, fx.h, review, func() {
				n++
				copy(review[at+1:at+10], fmt.Appendf(nil, "%09d", n))
			})
		})
	}
}

func benchReview(b *testing.B, h http.Handler, review []byte, before func()) {
	req, err := http.NewRequest(http.MethodPost, "/mutate?timeout=5s", nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.ContentLength = int64(len(review))
	rb := &body{}
	req.Body = rb
	w := &discard{header: http.Header{}}
	b.SetBytes(int64(len(review)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if before != nil {
			before()
		}
		rb.Reset(review)
		clear(w.header)
		w.n = 0
		h.ServeHTTP(w, req)
	}
	if w.n == 0 {
		b.Fatal("no answer")
	}
}

// BenchmarkDecode is the typed decoding of an opted-in pod's review: the
// AdmissionReview, then the pod.
func BenchmarkDecode(b *testing.B) {
	for _, size := range []int{2 << 10, 64 << 10} {
		body := reviewOfRaw(b, paddedPod(basePod(), size), reviewOpts{})
		b.Run("review+pod/"+strconv.Itoa(size>>10)+"KiB", func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				req, err := decodeReview(body)
				if err != nil {
					b.Fatal(err)
				}
				if c := classify(req); c.pod == nil {
					b.Fatalf("the pod was not classified for injection: %+v", c)
				}
			}
		})
	}
}

func BenchmarkPatch(b *testing.B) {
	in, err := newInjection(testSidecar())
	if err != nil {
		b.Fatal(err)
	}
	p := &plan{metricsPort: 8080, metricsPath: "/metrics", hasAnnotations: true, gracePeriod: defaultGracePeriod}
	env := &leaseEnv{namespace: "ns", key: "k", size: 3, ca: []byte(testCA)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := in.patch(p, env); err != nil {
			b.Fatal(err)
		}
	}
}
