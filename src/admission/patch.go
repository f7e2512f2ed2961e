package admission

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// patchOperation is one RFC 6902 operation. The webhook only adds: an
// "add" also replaces an existing object member.
type patchOperation struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// leaseEnv is the semaphore part of the sidecar's environment. lease is nil
// when no slot was taken (dry run, or no quorum under the allow policy):
// the sidecar then takes one itself. holder is the pod's holder id, set on
// every path but the dry run, so that the pod maps to its lease whether or
// not the webhook took the slot.
type leaseEnv struct {
	namespace, key string
	size           int
	holder         string
	lease          *semaphore.Lease
	ca             []byte
}

// patch is the RFC 6902 patch for one pod: the webhook's annotations, the
// rewritten port annotation, the sidecar and the raised grace period.
func (in *injection) patch(p *plan, lease *leaseEnv) ([]byte, error) {
	grace := gracePeriodFor(&p.gracePeriod, p.scrapeInterval)
	sidecar, err := in.sidecarJSON(p, lease, grace)
	if err != nil {
		return nil, err
	}
	ops := in.annotationOps(p, lease)
	if lease != nil && lease.holder != "" {
		ops = append(ops, holderLabelOp(p, lease.holder))
	}
	ops = append(ops, in.containerOp(p, sidecar))
	ops = append(ops, patchOperation{Op: "add", Path: "/spec/terminationGracePeriodSeconds", Value: grace})
	if in.native {
		ops = append(ops, preStopOps(p.containers, in.port)...)
	}
	if lease != nil {
		ops = append(ops, tokenVolumeOp(in.tokenAudience, p.hasVolumes))
	}
	return json.Marshal(ops)
}

func (in *injection) annotationOps(p *plan, lease *leaseEnv) []patchOperation {
	ann := [][2]string{
		{AnnotationInjected, "true"},
		{AnnotationPort, strconv.Itoa(int(in.port))},
	}
	if lease != nil && lease.lease != nil {
		ann = append(ann, [2]string{AnnotationSemaphoreSlot, strconv.Itoa(lease.lease.Slot)})
	}
	if lease != nil && lease.holder != "" {
		ann = append(ann, [2]string{AnnotationHolder, lease.holder})
	}
	if !p.hasAnnotations {
		m := make(map[string]string, len(ann))
		for _, kv := range ann {
			m[kv[0]] = kv[1]
		}
		return []patchOperation{{Op: "add", Path: "/metadata/annotations", Value: m}}
	}
	ops := make([]patchOperation, 0, len(ann)+2)
	for _, kv := range ann {
		ops = append(ops, patchOperation{Op: "add", Path: annotationPath(kv[0]), Value: kv[1]})
	}
	return ops
}

// annotationPath is the JSON pointer of an annotation: "~" and "/" in the
// key are escaped as RFC 6901 asks.
func annotationPath(key string) string {
	return "/metadata/annotations/" + pointerEscaper.Replace(key)
}

var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

func (in *injection) containerOp(p *plan, c json.RawMessage) patchOperation {
	switch {
	case !in.native:
		return patchOperation{Op: "add", Path: "/spec/containers/-", Value: c}
	case p.initContainers == 0:
		return patchOperation{Op: "add", Path: "/spec/initContainers", Value: []json.RawMessage{c}}
	default:
		// First, so that it runs before the other init containers and is
		// up before the application's containers start.
		return patchOperation{Op: "add", Path: "/spec/initContainers/0", Value: c}
	}
}

// sidecarJSON is the sidecar container with the pod's environment.
func (in *injection) sidecarJSON(p *plan, lease *leaseEnv, grace int64) (json.RawMessage, error) {
	env := make([]corev1.EnvVar, 0, 13)
	add := func(name, value string) { env = append(env, corev1.EnvVar{Name: name, Value: value}) }
	add("PMPH_LISTEN_ADDRESS", in.listenAddressEnv)
	add("PMPH_UPSTREAM", "http://127.0.0.1:"+strconv.Itoa(int(p.metricsPort))+p.metricsPath)
	add("PMPH_GRACE_PERIOD", strconv.FormatInt(grace, 10)+"s")
	add("PMPH_SCRAPE_INTERVAL", p.scrapeInterval.String())
	if in.native {
		add("PMPH_NATIVE_SIDECAR", "true")
	}
	if lease != nil {
		add("PMPH_LEASE_URL", in.leaseURL)
		if len(lease.ca) > 0 {
			add("PMPH_LEASE_CA", string(lease.ca))
		}
		add("PMPH_LEASE_NAMESPACE", lease.namespace)
		add("PMPH_LEASE_KEY", lease.key)
		add("PMPH_LEASE_SIZE", strconv.Itoa(lease.size))
		if lease.lease != nil {
			add("PMPH_LEASE_SLOT", strconv.Itoa(lease.lease.Slot))
		}
		if lease.holder != "" {
			add("PMPH_LEASE_HOLDER", lease.holder)
		}
		add("PMPH_LEASE_TOKEN_FILE", TokenPath)
	}
	envJSON, err := json.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("encoding the sidecar's environment: %w", err)
	}
	// The container is an object: its per-pod members can come first.
	c := make(json.RawMessage, 0, len(`{"env":,`)+len(envJSON)+len(in.containerJSON)+len(in.tokenMountJSON)+16)
	c = append(append(c, `{"env":`...), envJSON...)
	if lease != nil {
		c = append(append(c, `,"volumeMounts":`...), in.tokenMountJSON...)
	}
	c = append(c, ',')
	return append(c, in.containerJSON[1:]...), nil
}
