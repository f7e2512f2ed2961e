package admission

import (
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// Presence bits of FuzzAnnotations' mask: which annotations the pod sets.
const (
	bitKey = 1 << iota
	bitSize
	bitTimeout
	bitPort
	bitPath
)

// FuzzAnnotations checks annotation parsing (planFor) on its own, without
// Redis: for any values, exactly one of a plan and a denial; a plan obeys
// every rule of the design brief's annotation table; a denial is a 400
// that names what it refuses, quoting the value as the pod has it.
func FuzzAnnotations(f *testing.F) {
	const sidecarPort = 65532
	type seed struct {
		key, size, timeout, port, path string
		mask                           uint8
		container                      string
		containerPort, hostPort        int32
		hostNetwork                    bool
	}
	all := uint8(bitKey | bitSize | bitTimeout | bitPort | bitPath)
	for _, s := range []seed{
		{"batch", "3", "5m", "8080", "/metrics", all, "app", 8080, 0, false},
		{"batch", "1024", "1h", "http", "/m?x=1", all, "app", 8080, 0, false},
		{"batch", "1025", "1h", "8080", "/", all, "app", 8080, 0, false},
		{"batch", "0", "1s", "8080", "/", all, "app", 8080, 0, false},
		{"batch", "+3", "3600s", "08080", "/", all, "app", 8080, 0, false},
		{"batch", " 3", "61m", "65532", "/", all, "app", 8080, 0, false},
		{"a/b", "1", "-5m", "0", "metrics", all, "app", 8080, 0, false},
		{"", "", "", "", "", all, "app", 8080, 0, false},
		{strings.Repeat("k", 64), "ten", "5", "Metrics!", "/me trics", all, "app", 8080, 0, false},
		{"k-", "1", "1h0m1s", "web", "/\x7f", all, "app", 8080, 0, false},
		{"k", "1", "5m", "8080", "/", bitSize | bitPort, "app", 8080, 0, false},
		{"k", "1", "5m", "8080", "/", bitKey | bitPort, "app", 8080, 0, false},
		{"k", "1", "5m", "8080", "/", bitTimeout | bitPort, "app", 8080, 0, false},
		{"k", "1", "5m", "", "/", bitKey | bitSize, "app", 9090, 0, false},
		{"k", "1", "5m", "8080", "/", bitKey | bitSize | bitPort, ContainerName, 8080, 0, false},
		{"k", "1", "5m", "8080", "/", bitKey | bitSize | bitPort, "app", 65532, 65532, true},
		{"k", "1", "5m", "8080", "/", bitKey | bitSize | bitPort, "app", 8080, 65532, true},
		{"k", "1", "5m", "8080", "/", bitKey | bitSize | bitPort, "app", 8080, 65532, false},
		{"k", "1", "5m", "metrics", "/", bitKey | bitSize | bitPort, "app", 8080, 0, false},
	} {
		f.Add(s.key, s.size, s.timeout, s.port, s.path, s.mask, s.container, s.containerPort, s.hostPort, s.hostNetwork)
	}
	f.Fuzz(func(t *testing.T, key, size, timeout, port, path string, mask uint8, container string, containerPort, hostPort int32, hostNetwork bool) {
		ann := map[string]string{AnnotationOptIn: "true"}
		set := func(bit uint8, name, value string) {
			if mask&bit != 0 {
				ann[name] = value
			}
		}
		set(bitKey, AnnotationSemaphoreKey, key)
		set(bitSize, AnnotationSemaphoreSize, size)
		set(bitTimeout, AnnotationStartupTimeout, timeout)
		set(bitPort, AnnotationPort, port)
		set(bitPath, AnnotationPath, path)
		pod := podObject{
			ObjectMeta: metav1.ObjectMeta{Annotations: ann},
			Spec: podSpec{HostNetwork: hostNetwork, Containers: []containerPorts{{Name: container, Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: containerPort, HostPort: hostPort},
			}}}},
		}

		p, den := planFor(&pod, sidecarPort, DefaultScrapeInterval)
		if (p == nil) == (den == nil) {
			t.Fatalf("planFor answered plan %+v and denial %+v: want exactly one", p, den)
		}
		if den != nil {
			checkAnnotationDenial(t, ann, den)
			return
		}
		checkAnnotationPlan(t, ann, p, sidecarPort)
	})
}

func checkAnnotationDenial(t *testing.T, ann map[string]string, den *denial) {
	t.Helper()
	if den.code != 400 {
		t.Fatalf("denial with code %d, want 400: %q", den.code, den.message)
	}
	named := strings.Contains(den.message, "container")
	for name, value := range ann {
		if !strings.Contains(den.message, name) {
			continue
		}
		named = true
		// "annotation X "v" must ...": the value is quoted as the pod has
		// it, so that users see exactly what was refused.
		if strings.Contains(den.message, name+` "`) && !strings.Contains(den.message, name+" "+strconv.Quote(value)) {
			t.Fatalf("denial %q quotes %s, but not its value %q", den.message, name, value)
		}
	}
	if !named {
		t.Fatalf("denial %q names neither an annotation nor a container", den.message)
	}
}

func checkAnnotationPlan(t *testing.T, ann map[string]string, p *plan, sidecarPort int32) {
	t.Helper()
	if p.metricsPort < 1 || p.metricsPort > 65535 || p.metricsPort == sidecarPort {
		t.Fatalf("accepted metrics port %d (annotation %q)", p.metricsPort, ann[AnnotationPort])
	}
	if !validPath(p.metricsPath) {
		t.Fatalf("accepted metrics path %q", p.metricsPath)
	}
	if v, ok := ann[AnnotationPath]; ok && p.metricsPath != v {
		t.Fatalf("path %q, annotation %q", p.metricsPath, v)
	}
	key, hasKey := ann[AnnotationSemaphoreKey]
	switch {
	case hasKey:
		if p.semaphoreKey != key || leaseapi.ValidateKey(key) != nil {
			t.Fatalf("accepted semaphore key %q as %q", key, p.semaphoreKey)
		}
		if p.semaphoreSize < 1 || p.semaphoreSize > semaphore.MaxSize {
			t.Fatalf("accepted size %d (annotation %q)", p.semaphoreSize, ann[AnnotationSemaphoreSize])
		}
		if n, err := strconv.Atoi(ann[AnnotationSemaphoreSize]); err != nil || n != p.semaphoreSize {
			t.Fatalf("size %d from annotation %q", p.semaphoreSize, ann[AnnotationSemaphoreSize])
		}
	case p.semaphoreKey != "" || p.semaphoreSize != 0:
		t.Fatalf("a semaphore %q/%d without the key annotation", p.semaphoreKey, p.semaphoreSize)
	}
	if p.startupTimeout < MinStartupTimeout || p.startupTimeout > MaxStartupTimeout {
		t.Fatalf("accepted startup timeout %s (annotation %q)", p.startupTimeout, ann[AnnotationStartupTimeout])
	}
	if v, ok := ann[AnnotationStartupTimeout]; ok {
		if d, err := time.ParseDuration(v); err != nil || d != p.startupTimeout {
			t.Fatalf("startup timeout %s from annotation %q", p.startupTimeout, v)
		}
	} else if p.startupTimeout != DefaultStartupTimeout {
		t.Fatalf("startup timeout %s without the annotation, want the default %s", p.startupTimeout, DefaultStartupTimeout)
	}
}
