package admission

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

func ptr[T any](v T) *T { return &v }

func TestPassThrough(t *testing.T) {
	f := newFixture(t, nil)
	notOptedIn := basePod()
	delete(notOptedIn.Annotations, AnnotationOptIn)
	injected := basePod()
	injected.Annotations[AnnotationInjected] = "true"
	injected.Spec.Containers = append(injected.Spec.Containers, corev1.Container{Name: ContainerName, Image: "x"})
	noAnnotations := basePod()
	noAnnotations.Annotations = nil
	optedOut := basePod()
	optedOut.Annotations[AnnotationOptIn] = "false"

	deployment := &appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: "d", Annotations: map[string]string{AnnotationOptIn: "true"}}}

	cases := []struct {
		name string
		body []byte
	}{
		{"pod without annotations", reviewJSON(t, noAnnotations, reviewOpts{})},
		{"pod without the opt-in annotation", reviewJSON(t, notOptedIn, reviewOpts{})},
		{"pod opted out with false", reviewJSON(t, optedOut, reviewOpts{})},
		{"pod already injected (reinvocation)", reviewJSON(t, injected, reviewOpts{})},
		{"annotated pod UPDATE", reviewJSON(t, basePod(), reviewOpts{operation: admissionv1.Update})},
		{"annotated pod DELETE", reviewJSON(t, basePod(), reviewOpts{operation: admissionv1.Delete})},
		{"annotated pod CONNECT", reviewJSON(t, basePod(), reviewOpts{operation: admissionv1.Connect})},
		{"deployment CREATE", reviewJSON(t, deployment, reviewOpts{kind: metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}})},
		{"pod of another group", reviewJSON(t, basePod(), reviewOpts{kind: metav1.GroupVersionKind{Group: "example.org", Version: "v1", Kind: "Pod"}})},
		{"DELETE without object", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"DELETE","namespace":"a","object":null}}`)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := admit(t, f.h, tc.body)
			if !resp.Allowed || resp.Patch != nil || resp.PatchType != nil || resp.Result != nil || len(resp.Warnings) != 0 {
				t.Fatalf("want allowed without patch or warning, got %+v", resp)
			}
		})
	}
}

func TestOptInValueMustBeExactlyTrue(t *testing.T) {
	f := newFixture(t, nil)
	for _, v := range []string{"True", "TRUE", "yes", "1", "on", " true"} {
		t.Run(v, func(t *testing.T) {
			pod := basePod()
			pod.Annotations[AnnotationOptIn] = v
			resp := admit(t, f.h, reviewJSON(t, pod, reviewOpts{}))
			if !resp.Allowed || resp.Patch != nil {
				t.Fatalf("want allowed untouched, got %+v", resp)
			}
			if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], `only the exact value "true" opts in`) ||
				!strings.Contains(resp.Warnings[0], AnnotationOptIn) {
				t.Fatalf("want a warning naming the annotation, got %q", resp.Warnings)
			}
		})
	}
}

func TestDenials(t *testing.T) {
	f := newFixture(t, nil)
	with := func(edit func(p *corev1.Pod)) *corev1.Pod {
		p := basePod()
		edit(p)
		return p
	}
	ann := func(kv ...string) func(p *corev1.Pod) {
		return func(p *corev1.Pod) {
			for i := 0; i < len(kv); i += 2 {
				if kv[i+1] == "<delete>" {
					delete(p.Annotations, kv[i])
				} else {
					p.Annotations[kv[i]] = kv[i+1]
				}
			}
		}
	}
	cases := []struct {
		name string
		pod  *corev1.Pod
		code int32
		want string
	}{
		{"size zero", with(ann(AnnotationSemaphoreKey, "k", AnnotationSemaphoreSize, "0")), 400,
			AnnotationSemaphoreSize + ` "0" must be an integer from 1 to 1024`},
		{"size too big", with(ann(AnnotationSemaphoreKey, "k", AnnotationSemaphoreSize, "1025")), 400,
			`semaphore-size "1025" must be an integer from 1 to 1024`},
		{"size not a number", with(ann(AnnotationSemaphoreKey, "k", AnnotationSemaphoreSize, "ten")), 400,
			`semaphore-size "ten" must be an integer from 1 to 1024`},
		{"size negative", with(ann(AnnotationSemaphoreKey, "k", AnnotationSemaphoreSize, "-1")), 400,
			`semaphore-size "-1" must be an integer from 1 to 1024`},
		{"size with a sign", with(ann(AnnotationSemaphoreKey, "k", AnnotationSemaphoreSize, "+3")), 400,
			`semaphore-size "+3" must be an integer from 1 to 1024`},
		{"key without size", with(ann(AnnotationSemaphoreKey, "k")), 400,
			AnnotationSemaphoreSize + ` is required with ` + AnnotationSemaphoreKey + ` "k"`},
		{"size without key", with(ann(AnnotationSemaphoreSize, "3")), 400,
			AnnotationSemaphoreSize + ` "3" is set but annotation ` + AnnotationSemaphoreKey + ` is missing`},
		{"key with a slash", with(ann(AnnotationSemaphoreKey, "a/b", AnnotationSemaphoreSize, "1")), 400,
			AnnotationSemaphoreKey + ` "a/b" must be 1 to 63 characters`},
		{"key empty", with(ann(AnnotationSemaphoreKey, "", AnnotationSemaphoreSize, "1")), 400,
			AnnotationSemaphoreKey + ` "" must be 1 to 63 characters`},
		{"key too long", with(ann(AnnotationSemaphoreKey, strings.Repeat("a", 64), AnnotationSemaphoreSize, "1")), 400,
			`must be 1 to 63 characters`},
		{"key ends with a dash", with(ann(AnnotationSemaphoreKey, "a-", AnnotationSemaphoreSize, "1")), 400,
			AnnotationSemaphoreKey + ` "a-" must be 1 to 63 characters`},
		{"startup timeout zero", with(ann(AnnotationSemaphoreKey, "k", AnnotationSemaphoreSize, "1", AnnotationStartupTimeout, "0s")), 400,
			AnnotationStartupTimeout + ` "0s" must be a Go duration from 1s to 1h`},
		{"startup timeout too long", with(ann(AnnotationSemaphoreKey, "k", AnnotationSemaphoreSize, "1", AnnotationStartupTimeout, "61m")), 400,
			`semaphore-startup-timeout "61m" must be a Go duration from 1s to 1h`},
		{"startup timeout not a duration", with(ann(AnnotationSemaphoreKey, "k", AnnotationSemaphoreSize, "1", AnnotationStartupTimeout, "5")), 400,
			`semaphore-startup-timeout "5" must be a Go duration from 1s to 1h`},
		{"startup timeout negative", with(ann(AnnotationSemaphoreKey, "k", AnnotationSemaphoreSize, "1", AnnotationStartupTimeout, "-5m")), 400,
			`semaphore-startup-timeout "-5m" must be a Go duration`},
		{"scrape interval not a duration", with(ann(AnnotationScrapeInterval, "15")), 400,
			AnnotationScrapeInterval + ` "15" must be a Go duration from 1s to 10m, such as 15s or 1m`},
		{"scrape interval too short", with(ann(AnnotationScrapeInterval, "500ms")), 400,
			`scrape-interval "500ms" must be a Go duration from 1s to 10m`},
		{"scrape interval too long", with(ann(AnnotationScrapeInterval, "11m")), 400,
			`scrape-interval "11m" must be a Go duration from 1s to 10m`},
		{"port zero", with(ann(AnnotationPort, "0")), 400,
			`annotation prometheus.io/port "0" must be a port number from 1 to 65535 or the name of a container port`},
		{"port too big", with(ann(AnnotationPort, "65536")), 400,
			`prometheus.io/port "65536" must be a port number from 1 to 65535`},
		{"port not a name", with(ann(AnnotationPort, "Metrics!")), 400,
			`prometheus.io/port "Metrics!" must be a port number from 1 to 65535 or the name of a container port`},
		{"port empty", with(ann(AnnotationPort, "")), 400,
			`prometheus.io/port "" must be a port number`},
		{"port name unknown", with(ann(AnnotationPort, "web")), 400,
			`prometheus.io/port "web" names no container port`},
		{"port absent and no metrics port", with(ann(AnnotationPort, "<delete>")), 400,
			`annotation prometheus.io/port is absent and no container port is named "metrics"`},
		{"port is the sidecar's", with(ann(AnnotationPort, "65532")), 400,
			`prometheus.io/port "65532" is the port of the injected metrics proxy (65532)`},
		{"path without slash", with(ann(AnnotationPath, "metrics")), 400,
			`annotation prometheus.io/path "metrics" must be a URL path that starts with "/"`},
		{"path with a space", with(ann(AnnotationPath, "/me trics")), 400,
			`prometheus.io/path "/me trics" must be a URL path`},
		{"no containers", with(func(p *corev1.Pod) { p.Spec.Containers = nil }), 400, "the pod has no containers"},
		{"container named like the sidecar", with(func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: ContainerName, Image: "x"})
		}), 400, `container "prometheus-metrics-proxy" already exists`},
		{"init container named like the sidecar", with(func(p *corev1.Pod) {
			p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: ContainerName, Image: "x"})
		}), 400, `init container "prometheus-metrics-proxy" already exists`},
		{"hostNetwork pod with the sidecar's port", with(func(p *corev1.Pod) {
			p.Spec.HostNetwork = true
			p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{ContainerPort: 65532, HostPort: 65532})
		}), 400, `container "app" declares port 65532, which the injected metrics proxy listens on in the node's network (hostNetwork: true)`},
		{"container declaring the sidecar's port", with(func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{ContainerPort: 65532})
		}), 400, `container "app" declares port 65532`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := admit(t, f.h, reviewJSON(t, tc.pod, reviewOpts{}))
			if resp.Allowed || resp.Patch != nil {
				t.Fatalf("want a denial, got %+v", resp)
			}
			if resp.Result == nil || resp.Result.Code != tc.code || resp.Result.Status != metav1.StatusFailure ||
				resp.Result.Reason != metav1.StatusReasonBadRequest {
				t.Fatalf("want status code %d BadRequest, got %+v", tc.code, resp.Result)
			}
			if !strings.Contains(resp.Result.Message, tc.want) {
				t.Fatalf("message %q does not contain %q", resp.Result.Message, tc.want)
			}
		})
	}
	if got := held(t, f.sem, testNamespace+"/k", 1); got != 0 {
		t.Fatalf("a denied pod took a slot: %d held", got)
	}
}

func TestInjection(t *testing.T) {
	f := newFixture(t, nil)
	raw, _ := json.Marshal(basePod())
	resp := admit(t, f.h, reviewOfRaw(t, raw, reviewOpts{}))
	if !resp.Allowed || resp.Result != nil || len(resp.Warnings) != 0 {
		t.Fatalf("want allowed without warnings, got %+v", resp)
	}
	pod := patched(t, raw, resp)
	c, init, n := sidecarOf(pod)
	if n != 1 || init {
		t.Fatalf("want one regular sidecar container, got %d (init %v)", n, init)
	}
	if len(pod.Spec.Containers) != 2 || pod.Spec.Containers[0].Name != "app" {
		t.Fatalf("the app container must stay first: %+v", pod.Spec.Containers)
	}
	want := corev1.Container{
		Name: ContainerName, Image: "example.org/pmph:test", ImagePullPolicy: corev1.PullIfNotPresent,
		Command: []string{SidecarCommand},
		Ports:   []corev1.ContainerPort{{Name: SidecarPortName, ContainerPort: 65532, Protocol: corev1.ProtocolTCP}},
		Env: []corev1.EnvVar{
			{Name: "PMPH_LISTEN_ADDRESS", Value: ":65532"},
			{Name: "PMPH_UPSTREAM", Value: "http://127.0.0.1:8080/metrics"},
			// The pod's own 30 s, a scrape interval of 60 s, 10 s margin.
			{Name: "PMPH_GRACE_PERIOD", Value: "100s"},
			{Name: "PMPH_SCRAPE_INTERVAL", Value: "1m0s"},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if c.Name != want.Name || c.Image != want.Image || c.ImagePullPolicy != want.ImagePullPolicy ||
		!reflect.DeepEqual(c.Command, want.Command) || len(c.Args) != 0 || !reflect.DeepEqual(c.Ports, want.Ports) || !reflect.DeepEqual(c.Env, want.Env) ||
		c.TerminationMessagePolicy != want.TerminationMessagePolicy || c.RestartPolicy != nil {
		t.Fatalf("sidecar:\n got %+v\nwant %+v", c, want)
	}
	if got := c.Resources.Requests.Cpu().String(); got != "10m" {
		t.Errorf("cpu request %s", got)
	}
	if got := c.Resources.Requests.Memory().String(); got != "16Mi" {
		t.Errorf("memory request %s", got)
	}
	if got := c.Resources.Limits.Memory().String(); got != "32Mi" {
		t.Errorf("memory limit %s", got)
	}
	if _, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		t.Errorf("no cpu limit was configured, got %v", c.Resources.Limits)
	}
	sc := c.SecurityContext
	if sc == nil || !*sc.RunAsNonRoot || *sc.RunAsUser != 65532 || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem ||
		!reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Fatalf("security context is not restricted: %+v", sc)
	}
	if pod.Annotations[AnnotationPort] != "65532" || pod.Annotations[AnnotationInjected] != "true" || pod.Annotations[AnnotationOptIn] != "true" {
		t.Fatalf("annotations: %v", pod.Annotations)
	}
	if _, ok := pod.Annotations[AnnotationSemaphoreSlot]; ok {
		t.Fatalf("no semaphore, yet a slot annotation: %v", pod.Annotations)
	}
	if pod.Spec.TerminationGracePeriodSeconds == nil || *pod.Spec.TerminationGracePeriodSeconds != 100 {
		t.Fatalf("grace period: %v", pod.Spec.TerminationGracePeriodSeconds)
	}
	if p := c.StartupProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != StartedPath || p.HTTPGet.Port.StrVal != SidecarPortName ||
		p.PeriodSeconds != 1 || p.FailureThreshold != 1<<31-1 {
		t.Fatalf("startup probe: %+v", c.StartupProbe)
	}
	if pod.Spec.Containers[0].Lifecycle != nil {
		t.Fatalf("a regular sidecar gives the app no preStop hook: %+v", pod.Spec.Containers[0].Lifecycle)
	}

	// The patched pod comes back on reinvocation: it is left alone.
	again, _ := json.Marshal(pod)
	resp = admit(t, f.h, reviewOfRaw(t, again, reviewOpts{}))
	if !resp.Allowed || resp.Patch != nil {
		t.Fatalf("reinvocation must not patch again: %+v", resp)
	}
}

func TestInjectionVariants(t *testing.T) {
	f := newFixture(t, nil)
	native := newFixtureOn(t, f.cluster, func(c *Config) { c.Sidecar.Native = true })
	cases := []struct {
		name  string
		h     *Handler
		edit  func(p *corev1.Pod)
		check func(t *testing.T, p *corev1.Pod, resp *admissionv1.AdmissionResponse)
	}{
		{"port found by name", f.h, func(p *corev1.Pod) {
			delete(p.Annotations, AnnotationPort)
			p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{Name: "metrics", ContainerPort: 9090})
		}, func(t *testing.T, p *corev1.Pod, resp *admissionv1.AdmissionResponse) {
			c, _, _ := sidecarOf(p)
			if envOf(c)["PMPH_UPSTREAM"] != "http://127.0.0.1:9090/metrics" {
				t.Fatalf("upstream %q", envOf(c)["PMPH_UPSTREAM"])
			}
			if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], `the metrics port 9090 was found by its name "metrics"`) {
				t.Fatalf("warnings %q", resp.Warnings)
			}
		}},
		{"port given by name and custom path", f.h, func(p *corev1.Pod) {
			p.Annotations[AnnotationPort] = "http"
			p.Annotations[AnnotationPath] = "/custom/metrics?x=1"
		}, func(t *testing.T, p *corev1.Pod, _ *admissionv1.AdmissionResponse) {
			c, _, _ := sidecarOf(p)
			if envOf(c)["PMPH_UPSTREAM"] != "http://127.0.0.1:8080/custom/metrics?x=1" {
				t.Fatalf("upstream %q", envOf(c)["PMPH_UPSTREAM"])
			}
			if p.Annotations[AnnotationPort] != "65532" {
				t.Fatalf("port annotation %q", p.Annotations[AnnotationPort])
			}
		}},
		{"long grace period raised by the interval and margin", f.h, func(p *corev1.Pod) {
			p.Spec.TerminationGracePeriodSeconds = ptr(int64(120))
		}, func(t *testing.T, p *corev1.Pod, _ *admissionv1.AdmissionResponse) {
			c, _, _ := sidecarOf(p)
			if *p.Spec.TerminationGracePeriodSeconds != 190 || envOf(c)["PMPH_GRACE_PERIOD"] != "190s" {
				t.Fatalf("grace %d env %q", *p.Spec.TerminationGracePeriodSeconds, envOf(c)["PMPH_GRACE_PERIOD"])
			}
		}},
		{"zero grace period raised", f.h, func(p *corev1.Pod) {
			p.Spec.TerminationGracePeriodSeconds = ptr(int64(0))
		}, func(t *testing.T, p *corev1.Pod, _ *admissionv1.AdmissionResponse) {
			if *p.Spec.TerminationGracePeriodSeconds != 70 {
				t.Fatalf("grace %d", *p.Spec.TerminationGracePeriodSeconds)
			}
		}},
		{"declared scrape interval", f.h, func(p *corev1.Pod) {
			p.Annotations[AnnotationScrapeInterval] = "15s"
		}, func(t *testing.T, p *corev1.Pod, _ *admissionv1.AdmissionResponse) {
			c, _, _ := sidecarOf(p)
			if *p.Spec.TerminationGracePeriodSeconds != 55 || envOf(c)["PMPH_SCRAPE_INTERVAL"] != "15s" || envOf(c)["PMPH_GRACE_PERIOD"] != "55s" {
				t.Fatalf("grace %d env %v", *p.Spec.TerminationGracePeriodSeconds, envOf(c))
			}
		}},
		{"startup timeout without key warns", f.h, func(p *corev1.Pod) {
			p.Annotations[AnnotationStartupTimeout] = "10m"
		}, func(t *testing.T, _ *corev1.Pod, resp *admissionv1.AdmissionResponse) {
			if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "has no effect") {
				t.Fatalf("warnings %q", resp.Warnings)
			}
		}},
		{"native sidecar without init containers", native.h, func(p *corev1.Pod) {}, func(t *testing.T, p *corev1.Pod, _ *admissionv1.AdmissionResponse) {
			c, init, n := sidecarOf(p)
			if n != 1 || !init || len(p.Spec.InitContainers) != 1 || c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Fatalf("native sidecar: %+v", p.Spec.InitContainers)
			}
			if envOf(c)["PMPH_NATIVE_SIDECAR"] != "true" || c.StartupProbe == nil {
				t.Fatalf("native sidecar env %v, startup probe %+v", envOf(c), c.StartupProbe)
			}
		}},
		{"native sidecar gives app containers a preStop hook, keeping their own", native.h, func(p *corev1.Pod) {
			own := &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"sleep", "5"}}}
			p.Spec.Containers = append(p.Spec.Containers,
				corev1.Container{Name: "own-hook", Image: "busybox", Lifecycle: &corev1.Lifecycle{PreStop: own}},
				corev1.Container{Name: "post-start-only", Image: "busybox", Lifecycle: &corev1.Lifecycle{PostStart: own}})
		}, func(t *testing.T, p *corev1.Pod, _ *admissionv1.AdmissionResponse) {
			want := &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{Path: TerminatingPath, Port: intstr.FromInt32(65532)}}
			for _, c := range p.Spec.Containers {
				got := c.Lifecycle.PreStop
				switch c.Name {
				case "own-hook":
					if got.Exec == nil || got.HTTPGet != nil {
						t.Errorf("the container's own preStop hook was replaced: %+v", got)
					}
				default:
					if !reflect.DeepEqual(got, want) {
						t.Errorf("container %s preStop %+v, want %+v", c.Name, got, want)
					}
				}
				if c.Name == "post-start-only" && c.Lifecycle.PostStart == nil {
					t.Error("the postStart hook was lost")
				}
			}
		}},
		{"native sidecar goes first", native.h, func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "setup", Image: "busybox"}}
		}, func(t *testing.T, p *corev1.Pod, _ *admissionv1.AdmissionResponse) {
			if len(p.Spec.InitContainers) != 2 || p.Spec.InitContainers[0].Name != ContainerName || p.Spec.InitContainers[1].Name != "setup" {
				t.Fatalf("init containers: %+v", p.Spec.InitContainers)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := basePod()
			tc.edit(p)
			raw, _ := json.Marshal(p)
			resp := admit(t, tc.h, reviewOfRaw(t, raw, reviewOpts{}))
			if !resp.Allowed {
				t.Fatalf("denied: %+v", resp.Result)
			}
			tc.check(t, patched(t, raw, resp), resp)
		})
	}
}

func semaphorePod(key, size string) *corev1.Pod {
	p := basePod()
	p.Annotations[AnnotationSemaphoreKey] = key
	p.Annotations[AnnotationSemaphoreSize] = size
	return p
}

func TestSemaphoreGate(t *testing.T) {
	f := newFixture(t, nil)
	raw, _ := json.Marshal(semaphorePod("batch", "2"))
	var holders []string
	for i := range 2 {
		resp := admit(t, f.h, reviewOfRaw(t, raw, reviewOpts{}))
		if !resp.Allowed {
			t.Fatalf("pod %d denied: %+v", i, resp.Result)
		}
		pod := patched(t, raw, resp)
		c, _, _ := sidecarOf(pod)
		env := envOf(c)
		slot, holder := pod.Annotations[AnnotationSemaphoreSlot], pod.Annotations[AnnotationHolder]
		if !semaphore.ValidHolderID(holder) || (slot != "0" && slot != "1") {
			t.Fatalf("slot %q holder %q", slot, holder)
		}
		if pod.Labels[LabelHolder] != holder {
			t.Fatalf("labels %v, want the holder label %q", pod.Labels, holder)
		}
		wantEnv := map[string]string{
			"PMPH_LEASE_URL": testLeaseURL, "PMPH_LEASE_CA": testCA, "PMPH_LEASE_NAMESPACE": testNamespace,
			"PMPH_LEASE_KEY": "batch", "PMPH_LEASE_SIZE": "2", "PMPH_LEASE_SLOT": slot, "PMPH_LEASE_HOLDER": holder,
		}
		for k, v := range wantEnv {
			if env[k] != v {
				t.Fatalf("env %s = %q, want %q", k, env[k], v)
			}
		}
		holders = append(holders, holder)
	}
	if holders[0] == holders[1] {
		t.Fatal("two pods got the same holder id")
	}
	if got := held(t, f.sem, testNamespace+"/batch", 2); got != 2 {
		t.Fatalf("held %d, want 2", got)
	}

	// Full: the third pod is denied with the message users see.
	resp := admit(t, f.h, reviewOfRaw(t, raw, reviewOpts{}))
	if resp.Allowed || resp.Patch != nil {
		t.Fatalf("third pod must be denied: %+v", resp)
	}
	want := regexp.MustCompile(`^semaphore "team-a/batch" is full \(2/2 slots held\); its slots are held by pod app-\* \(slot 0, for [0-9]+s\), pod app-\* \(slot 1, for [0-9]+s\); the pod will be created when a slot frees up$`)
	if !want.MatchString(resp.Result.Message) || resp.Result.Code != 429 || resp.Result.Reason != metav1.StatusReasonTooManyRequests {
		t.Fatalf("full denial: %+v, want message %q code 429", resp.Result, want)
	}

	// Another namespace has its own semaphore of the same key.
	resp = admit(t, f.h, reviewOfRaw(t, raw, reviewOpts{namespace: "team-b"}))
	if !resp.Allowed {
		t.Fatalf("team-b's semaphore is separate: %+v", resp.Result)
	}

	// Dry run: the same patch, no slot, a warning.
	resp = admit(t, f.h, reviewOfRaw(t, mustJSON(semaphorePod("dry", "1")), reviewOpts{dryRun: true}))
	if !resp.Allowed || len(resp.Warnings) != 1 || resp.Warnings[0] != "dry run: no semaphore slot was taken" {
		t.Fatalf("dry run: %+v", resp)
	}
	pod := patched(t, mustJSON(semaphorePod("dry", "1")), resp)
	c, _, n := sidecarOf(pod)
	env := envOf(c)
	if n != 1 || env["PMPH_LEASE_KEY"] != "dry" || env["PMPH_LEASE_SLOT"] != "" || env["PMPH_LEASE_HOLDER"] != "" ||
		pod.Annotations[AnnotationHolder] != "" {
		t.Fatalf("dry run patch: env %v annotations %v", env, pod.Annotations)
	}
	if got := held(t, f.sem, testNamespace+"/dry", 1); got != 0 {
		t.Fatalf("dry run took a slot: %d", got)
	}
	// Even when the semaphore is full, a dry run is allowed.
	resp = admit(t, f.h, reviewOfRaw(t, raw, reviewOpts{dryRun: true}))
	if !resp.Allowed {
		t.Fatalf("dry run of a full semaphore: %+v", resp.Result)
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func TestNoQuorum(t *testing.T) {
	f := newFixture(t, nil)
	allow := newFixtureOn(t, f.cluster, func(c *Config) { c.NoQuorumPolicy = NoQuorumAllow })
	f.cluster.Nodes[0].Kill()
	f.cluster.Nodes[1].Kill()
	raw := mustJSON(semaphorePod("q", "3"))

	resp := admit(t, f.h, reviewOfRaw(t, raw, reviewOpts{}))
	if resp.Allowed || resp.Result.Code != 503 || resp.Result.Reason != metav1.StatusReasonServiceUnavailable ||
		!strings.HasPrefix(resp.Result.Message, `no slot of semaphore "team-a/q" could be taken: no Redis quorum`) ||
		!strings.HasSuffix(resp.Result.Message, "the pod will be created when Redis recovers") {
		t.Fatalf("deny policy: %+v", resp.Result)
	}
	if strings.Contains(resp.Result.Message, f.cluster.Password) {
		t.Fatal("the message holds the Redis password")
	}

	resp = admit(t, allow.h, reviewOfRaw(t, raw, reviewOpts{}))
	if !resp.Allowed || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "admitted without one because the webhook's no-quorum policy is allow") {
		t.Fatalf("allow policy: %+v", resp)
	}
	pod := patched(t, raw, resp)
	if _, ok := pod.Annotations[AnnotationSemaphoreSlot]; ok {
		t.Fatalf("allow policy must not write the slot annotation: %v", pod.Annotations)
	}
	// The pod still maps to the lease its sidecar will take: the lease API
	// accepts a pod's acquisition only under the holder the pod carries.
	holder := pod.Annotations[AnnotationHolder]
	if !semaphore.ValidHolderID(holder) || pod.Labels[LabelHolder] != holder {
		t.Fatalf("allow policy must write the holder annotation and label: annotations %v, labels %v", pod.Annotations, pod.Labels)
	}
	c, _, _ := sidecarOf(pod)
	if env := envOf(c); env["PMPH_LEASE_KEY"] != "q" || env["PMPH_LEASE_HOLDER"] != holder || env["PMPH_LEASE_SLOT"] != "" {
		t.Fatalf("env %v", env)
	}
}

func TestUndeliveredAnswerReleasesTheSlot(t *testing.T) {
	f := newFixture(t, nil)
	raw := mustJSON(semaphorePod("lost", "1"))

	t.Run("client gone before the answer", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		f.h.afterDecision = func(context.Context) { cancel() }
		defer func() { f.h.afterDecision = nil }()
		req := httptest.NewRequest(http.MethodPost, "/mutate", strings.NewReader(string(reviewOfRaw(t, raw, reviewOpts{})))).WithContext(ctx)
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		f.h.ServeHTTP(rec, req)
		if rec.Body.Len() != 0 {
			t.Fatalf("nothing must be written to a client that left: %q", rec.Body.String())
		}
		if got := held(t, f.sem, testNamespace+"/lost", 1); got != 0 {
			t.Fatalf("slot still held: %d", got)
		}
	})
	t.Run("write fails", func(t *testing.T) {
		req := httptest.NewRequest(http.MethodPost, "/mutate", strings.NewReader(string(reviewOfRaw(t, raw, reviewOpts{}))))
		req.Header.Set("Content-Type", "application/json")
		f.h.ServeHTTP(&brokenWriter{header: http.Header{}}, req)
		if got := held(t, f.sem, testNamespace+"/lost", 1); got != 0 {
			t.Fatalf("slot still held: %d", got)
		}
		if !strings.Contains(f.logs.String(), "the slot taken for it was given back") {
			t.Fatalf("log: %s", f.logs.String())
		}
	})
	// The semaphore of size 1 is free again: the next pod gets its slot.
	if resp := admit(t, f.h, reviewOfRaw(t, raw, reviewOpts{})); !resp.Allowed {
		t.Fatalf("slot was not given back: %+v", resp.Result)
	}
}

type brokenWriter struct{ header http.Header }

func (w *brokenWriter) Header() http.Header         { return w.header }
func (w *brokenWriter) WriteHeader(int)             {}
func (w *brokenWriter) Write(p []byte) (int, error) { return 0, errors.New("connection reset by peer") }

func TestConcurrentAdmissionsNeverOverAdmit(t *testing.T) {
	f := newFixture(t, nil)
	raw := mustJSON(semaphorePod("race", "5"))
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		allowed int
		slots   = map[string]bool{}
	)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := admit(t, f.h, reviewOfRaw(t, raw, reviewOpts{}))
			if !resp.Allowed {
				// Full, or a split among racing acquirers: both are
				// answers of the semaphore under contention.
				if resp.Result.Code != 429 && !strings.Contains(resp.Result.Message, "no slot was claimed on a quorum") {
					t.Errorf("unexpected denial %+v", resp.Result)
				}
				return
			}
			pod := patched(t, raw, resp)
			mu.Lock()
			defer mu.Unlock()
			allowed++
			slot := pod.Annotations[AnnotationSemaphoreSlot]
			if slots[slot] {
				t.Errorf("slot %s given twice", slot)
			}
			slots[slot] = true
		}()
	}
	wg.Wait()
	// At most 5: never over-admitted. (Fewer is possible under contention:
	// the semaphore may answer full while racing claims are being undone.)
	if allowed < 1 || allowed > 5 {
		t.Fatalf("allowed %d pods, want 1 to 5", allowed)
	}
	if got := held(t, f.sem, testNamespace+"/race", 5); got != allowed {
		t.Fatalf("%d slots held for %d admitted pods", got, allowed)
	}
	t.Logf("20 concurrent reviews for 5 slots: %d admitted", allowed)
}

func TestHTTPErrors(t *testing.T) {
	f := newFixture(t, nil)
	good := reviewJSON(t, basePod(), reviewOpts{})
	cases := []struct {
		name        string
		method      string
		contentType string
		body        string
		code        int
		want        string
	}{
		{"wrong method", http.MethodGet, "application/json", "", 405, "Method GET is not allowed"},
		{"no content type", http.MethodPost, "", string(good), 415, `Content type "" is not supported; send application/json.`},
		{"yaml", http.MethodPost, "application/yaml", string(good), 415, "send application/json"},
		{"json with charset", http.MethodPost, "application/json; charset=utf-8", string(good), 200, `"allowed":true`},
		{"malformed JSON", http.MethodPost, "application/json", `{"request":`, 400, "not a valid AdmissionReview"},
		{"trailing garbage", http.MethodPost, "application/json", string(good) + "x", 400, "not a valid AdmissionReview"},
		{"not an object", http.MethodPost, "application/json", `[]`, 400, "not a valid AdmissionReview"},
		{"no request", http.MethodPost, "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, 400, "has no request"},
		{"null request", http.MethodPost, "application/json", `{"request":null}`, 400, "has no request"},
		{"no uid", http.MethodPost, "application/json", `{"request":{"kind":{"kind":"Pod","version":"v1"},"operation":"CREATE"}}`, 400, "has no uid"},
		{"empty uid", http.MethodPost, "application/json", `{"request":{"uid":""}}`, 400, "has no uid"},
		{"a request field of the wrong type", http.MethodPost, "application/json", `{"request":{"uid":"a","dryRun":"yes","object":{"spec":{"containers":"x"}}}}`, 400, "not a valid AdmissionReview"},
		{"nested too deep", http.MethodPost, "application/json", strings.Repeat("[", 10001) + strings.Repeat("]", 10001), 400, "nested deeper than 10000 levels"},
		{"v1beta1", http.MethodPost, "application/json", `{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"a"}}`, 400, `apiVersion "admission.k8s.io/v1beta1" is not served`},
		{"too large", http.MethodPost, "application/json", `{"request":{"uid":"a","x":"` + strings.Repeat("a", MaxBodyBytes) + `"}}`, 413, "exceeds the limit"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, "/mutate", strings.NewReader(tc.body))
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			rec := httptest.NewRecorder()
			f.h.ServeHTTP(rec, req)
			if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.want) {
				t.Fatalf("got %d %q, want %d containing %q", rec.Code, rec.Body.String(), tc.code, tc.want)
			}
		})
	}
	// Without Content-Length (chunked), the limit still holds.
	req := httptest.NewRequest(http.MethodPost, "/mutate", &endless{})
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	if rec.Code != 413 {
		t.Fatalf("endless body: %d", rec.Code)
	}
}

type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	return len(p), nil
}

func TestReviewBudget(t *testing.T) {
	for q, want := range map[string]string{"": "9s", "timeout=5s": "4s", "timeout=1s": "800ms", "a=b&timeout=30s": "29s", "timeout=bad": "9s"} {
		if got := reviewBudget(q).String(); got != want {
			t.Errorf("reviewBudget(%q) = %s, want %s", q, got, want)
		}
	}
}

func TestPatchEscapesAnnotationKeys(t *testing.T) {
	if got, want := annotationPath("a~b/c"), "/metadata/annotations/a~0b~1c"; got != want {
		t.Fatalf("got %s want %s", got, want)
	}
}

func TestMemberOrderAndShapes(t *testing.T) {
	f := newFixture(t, nil)
	optIn := `"` + AnnotationOptIn + `":"true","prometheus.io/port":"8080"`
	spec := `"spec":{"containers":[{"name":"app","image":"a"}]}`
	meta := `"metadata":{"name":"p","annotations":{` + optIn + `}}`
	head := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1",`
	kind := `"kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"ns"`
	cases := []struct {
		name    string
		body    string
		patched bool
		denied  string
	}{
		{"API server order", head + kind + `,"object":{` + meta + `,` + spec + `}}}`, true, ""},
		{"object before kind and operation", head + `"object":{` + meta + `,` + spec + `},` + kind + `}}`, true, ""},
		{"spec before metadata", head + kind + `,"object":{` + spec + `,` + meta + `}}}`, true, ""},
		{"wrong shape, opted in", head + kind + `,"object":{` + meta + `,"spec":{"containers":"app"}}}}`, false, "the pod could not be decoded"},
		{"wrong port type, opted in", head + kind + `,"object":{` + meta + `,"spec":{"containers":[{"name":"a","ports":[{"containerPort":"80"}]}]}}}}`, false, "the pod could not be decoded"},
		{"wrong shape, not opted in", head + kind + `,"object":{"metadata":{"name":"p"},"spec":{"containers":"app"}}}}`, false, ""},
		{"object not an object", head + kind + `,"object":[1]}}`, false, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := admit(t, f.h, []byte(tc.body))
			switch {
			case tc.denied != "":
				if resp.Allowed || !strings.Contains(resp.Result.Message, tc.denied) {
					t.Fatalf("want a denial containing %q, got %+v", tc.denied, resp)
				}
			case tc.patched:
				if !resp.Allowed || resp.Patch == nil {
					t.Fatalf("want a patch, got %+v", resp)
				}
			default:
				if !resp.Allowed || resp.Patch != nil {
					t.Fatalf("want allowed untouched, got %+v", resp)
				}
			}
		})
	}
}

// TestClientDisconnectReleasesTheSlot goes through a real connection: the
// client gives up after the slot was taken and before the answer was
// written; the server notices the closed connection and gives the slot back.
func TestClientDisconnectReleasesTheSlot(t *testing.T) {
	f := newFixture(t, nil)
	decided := make(chan struct{}, 1)
	f.h.afterDecision = func(ctx context.Context) {
		decided <- struct{}{}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
			t.Error("the server never noticed the client had gone")
		}
	}
	served := make(chan struct{}, 1)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { served <- struct{}{} }()
		f.h.ServeHTTP(w, r)
	}))
	defer srv.Close()

	raw := mustJSON(semaphorePod("gone", "1"))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/mutate?timeout=5s", bytes.NewReader(reviewOfRaw(t, raw, reviewOpts{})))
	req.Header.Set("Content-Type", "application/json")
	errc := make(chan error, 1)
	go func() {
		resp, err := srv.Client().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-decided
	if got := held(t, f.sem, testNamespace+"/gone", 1); got != 1 {
		t.Fatalf("the slot should be held while the answer is pending: %d", got)
	}
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("the request succeeded although the client cancelled it")
	}
	<-served
	if got := held(t, f.sem, testNamespace+"/gone", 1); got != 0 {
		t.Fatalf("slot still held after the client left: %d", got)
	}
	if !strings.Contains(f.logs.String(), "the slot taken for it was given back") {
		t.Fatalf("log: %s", f.logs.String())
	}
}

// TestLeaseRecordAndHolderLabel checks what the reconciler relies on: the
// holder label next to existing labels, and the lease record naming the pod
// and its controller.
func TestLeaseRecordAndHolderLabel(t *testing.T) {
	f := newFixture(t, nil)
	pod := semaphorePod("rec", "1")
	pod.GenerateName, pod.Name = "", "web-0"
	pod.Labels = map[string]string{"app": "web"}
	isController := true
	pod.OwnerReferences = []metav1.OwnerReference{
		{APIVersion: "v1", Kind: "ConfigMap", Name: "not-the-controller", UID: "cm-uid"},
		{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "web", UID: "sts-uid", Controller: &isController},
	}
	raw := mustJSON(pod)
	resp := admit(t, f.h, reviewOfRaw(t, raw, reviewOpts{}))
	if !resp.Allowed {
		t.Fatalf("denied: %+v", resp.Result)
	}
	got := patched(t, raw, resp)
	holder := got.Annotations[AnnotationHolder]
	if got.Labels[LabelHolder] != holder || got.Labels["app"] != "web" {
		t.Fatalf("labels %v, want app=web and the holder %q", got.Labels, holder)
	}
	leases, err := f.sem.Leases(context.Background(), testNamespace+"/rec", 1)
	if err != nil || len(leases) != 1 || leases[0].Holder != holder || leases[0].Record == nil {
		t.Fatalf("leases %+v, %v: want one with a record", leases, err)
	}
	rec := leases[0].Record
	if rec.Pod != "web-0" || rec.Owner != "StatefulSet/web" || rec.OwnerAPIVersion != "apps/v1" || rec.OwnerUID != "sts-uid" ||
		time.Since(rec.Granted) > time.Minute || time.Since(rec.Granted) < 0 {
		t.Fatalf("record %+v, want pod web-0 owned by StatefulSet/web granted just now", rec)
	}
}
