package loadtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
)

// Variables a template may hold, written ${name}. They are replaced per
// request, so that every review is a different pod as the API server would
// send it.
const (
	VarUID       = "uid"       // the request uid, unique per request
	VarSeq       = "seq"       // the request's sequence number, from 0
	VarName      = "name"      // the pod name, load-<run>-<seq>
	VarNamespace = "namespace" // the pod's namespace
	VarKey       = "key"       // the semaphore key (unique or shared)
	VarSize      = "size"      // the semaphore size
)

// KeyMode says how the semaphore key varies between requests.
type KeyMode string

// Key modes.
const (
	KeyNone   KeyMode = ""       // no semaphore annotation
	KeyUnique KeyMode = "unique" // a fresh key per request: every admission is uncontended
	KeyShared KeyMode = "shared" // one key for every request: contended
)

// Vars are the per-request values; Template.Append writes them where the
// template names them.
type Vars struct {
	// Run tells runs apart, so that uids and unique keys never repeat
	// across runs against the same Redis nodes.
	Run       string
	Seq       uint64
	Namespace string
	// SharedKey is the key of KeyShared; KeyUnique derives one from Run
	// and Seq.
	SharedKey string
	KeyMode   KeyMode
	Size      int
}

// Key is the semaphore key of this request.
func (v *Vars) Key() string {
	if v.KeyMode == KeyUnique {
		return string(v.appendKey(nil))
	}
	return v.SharedKey
}

func (v *Vars) appendKey(b []byte) []byte {
	if v.KeyMode == KeyUnique {
		b = append(b, 'u', '-')
		b = append(b, v.Run...)
		b = append(b, '-')
		return strconv.AppendUint(b, v.Seq, 10)
	}
	return append(b, v.SharedKey...)
}

// appendUID writes a uid shaped like the API server's (a UUID), unique per
// run and sequence number.
func (v *Vars) appendUID(b []byte) []byte {
	const hex = "0123456789abcdef"
	var run [8]byte
	for i := range run {
		if i < len(v.Run) {
			run[i] = v.Run[i]
		} else {
			run[i] = '0'
		}
	}
	b = append(b, run[:]...)
	b = append(b, "-0000-4000-8000-"...)
	for shift := 44; shift >= 0; shift -= 4 {
		b = append(b, hex[(v.Seq>>uint(shift))&0xf])
	}
	return b
}

// segment is literal text followed by a variable (or none at the end).
type segment struct {
	lit []byte
	v   string
}

// Template is a review body with variables. It is compiled once; Append is
// cheap and allocation-free, so that the load tool spends its CPU on
// sending, not on building requests.
type Template struct {
	segs []segment
}

// Compile parses text with ${var} placeholders.
func Compile(text []byte) (*Template, error) {
	t := &Template{}
	for len(text) > 0 {
		i := bytes.Index(text, []byte("${"))
		if i < 0 {
			t.segs = append(t.segs, segment{lit: text})
			break
		}
		j := bytes.IndexByte(text[i:], '}')
		if j < 0 {
			return nil, fmt.Errorf("template: unterminated ${ at byte %d", i)
		}
		name := string(text[i+2 : i+j])
		switch name {
		case VarUID, VarSeq, VarName, VarNamespace, VarKey, VarSize:
		default:
			return nil, fmt.Errorf("template: unknown variable ${%s}; known: uid, seq, name, namespace, key, size", name)
		}
		t.segs = append(t.segs, segment{lit: text[:i], v: name})
		text = text[i+j+1:]
	}
	return t, nil
}

// Append writes the template with v's values to b.
func (t *Template) Append(b []byte, v *Vars) []byte {
	for _, s := range t.segs {
		b = append(b, s.lit...)
		switch s.v {
		case "":
		case VarUID:
			b = v.appendUID(b)
		case VarSeq:
			b = strconv.AppendUint(b, v.Seq, 10)
		case VarName:
			b = append(b, "load-"...)
			b = append(b, v.Run...)
			b = append(b, '-')
			b = strconv.AppendUint(b, v.Seq, 10)
		case VarNamespace:
			b = append(b, v.Namespace...)
		case VarKey:
			b = v.appendKey(b)
		case VarSize:
			b = strconv.AppendInt(b, int64(v.Size), 10)
		}
	}
	return b
}

// UID is the uid Append writes for v, to check the answer's echo.
func UID(v *Vars) string { return string(v.appendUID(nil)) }

// PodOptions describe the built-in pod.
type PodOptions struct {
	// Annotated opts the pod in.
	Annotated bool
	// KeyMode adds the semaphore annotations (with ${key} and ${size}).
	KeyMode KeyMode
	// StartupTimeout is the semaphore-startup-timeout annotation; empty
	// leaves the webhook's default (5m).
	StartupTimeout string
}

// Pod is the built-in pod template: a Deployment-style pod with one
// container, its metrics port annotated, as JSON with variables.
func Pod(o PodOptions) map[string]any {
	ann := map[string]any{"app.kubernetes.io/version": "1.0.0"}
	if o.Annotated {
		ann[admission.AnnotationOptIn] = "true"
		ann[admission.AnnotationPort] = "8080"
		ann["prometheus.io/scrape"] = "true"
	}
	if o.KeyMode != KeyNone {
		ann[admission.AnnotationSemaphoreKey] = "${key}"
		ann[admission.AnnotationSemaphoreSize] = "${size}"
		if o.StartupTimeout != "" {
			ann[admission.AnnotationStartupTimeout] = o.StartupTimeout
		}
	}
	return map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata": map[string]any{
			"name":        "${name}",
			"namespace":   "${namespace}",
			"labels":      map[string]any{"app.kubernetes.io/name": "load", "pod-template-hash": "5d8f7c9b6"},
			"annotations": ann,
			"ownerReferences": []any{map[string]any{
				"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "load-5d8f7c9b6",
				"uid": "6b1a3f2e-8c4d-4e5f-9a0b-1c2d3e4f5a6b", "controller": true, "blockOwnerDeletion": true,
			}},
		},
		"spec": map[string]any{
			"containers": []any{map[string]any{
				"name":  "app",
				"image": "registry.example.com/team/app:1.0.0",
				"ports": []any{
					map[string]any{"name": "http", "containerPort": 8080, "protocol": "TCP"},
				},
				"resources": map[string]any{
					"requests": map[string]any{"cpu": "100m", "memory": "128Mi"},
					"limits":   map[string]any{"memory": "256Mi"},
				},
				"terminationMessagePath":   "/dev/termination-log",
				"terminationMessagePolicy": "File",
				"imagePullPolicy":          "IfNotPresent",
			}},
			"restartPolicy":                 "Always",
			"terminationGracePeriodSeconds": 30,
			"dnsPolicy":                     "ClusterFirst",
			"serviceAccountName":            "default",
			"schedulerName":                 "default-scheduler",
			"enableServiceLinks":            true,
			"preemptionPolicy":              "PreemptLowerPriority",
			"priority":                      0,
		},
	}
}

// Pad grows pod with environment variables in its first container, the way
// real pods get big, until its JSON (with the variables of v filled in)
// is at least size bytes. It returns the JSON.
func Pad(pod map[string]any, size int, v *Vars) ([]byte, error) {
	raw, err := json.Marshal(pod)
	if err != nil {
		return nil, fmt.Errorf("encoding the pod: %w", err)
	}
	if size <= 0 {
		return raw, nil
	}
	spec, _ := pod["spec"].(map[string]any)
	containers, _ := spec["containers"].([]any)
	if len(containers) == 0 {
		return nil, fmt.Errorf("padding the pod to %d bytes: it has no container to add environment variables to", size)
	}
	c, ok := containers[0].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("padding the pod to %d bytes: its first container is not an object", size)
	}
	env, _ := c["env"].([]any)
	rendered := func() (int, error) {
		t, err := Compile(raw)
		if err != nil {
			return 0, err
		}
		return len(t.Append(nil, v)), nil
	}
	n, err := rendered()
	if err != nil {
		return nil, err
	}
	// An entry is about 80 bytes; add them in bulk, then one by one.
	const entry = `{"name":"SETTING_0000","value":"some-configuration-value-of-medium-length"},`
	for i := len(env); n < size; {
		bulk := max(1, (size-n)/len(entry)-1)
		for range bulk {
			env = append(env, map[string]any{"name": fmt.Sprintf("SETTING_%04d", i), "value": "some-configuration-value-of-medium-length"})
			i++
		}
		c["env"] = env
		if raw, err = json.Marshal(pod); err != nil {
			return nil, fmt.Errorf("encoding the pod: %w", err)
		}
		if n, err = rendered(); err != nil {
			return nil, err
		}
	}
	return raw, nil
}

// Review wraps a pod (JSON, with variables) into an AdmissionReview v1
// request for its CREATE, as the kube-apiserver sends it for a pod a
// ReplicaSet creates.
func Review(pod []byte, dryRun bool) []byte {
	var b bytes.Buffer
	b.WriteString(`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"${uid}",`)
	b.WriteString(`"kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},`)
	b.WriteString(`"requestKind":{"group":"","version":"v1","kind":"Pod"},"requestResource":{"group":"","version":"v1","resource":"pods"},`)
	b.WriteString(`"name":"${name}","namespace":"${namespace}","operation":"CREATE",`)
	b.WriteString(`"userInfo":{"username":"system:serviceaccount:kube-system:replicaset-controller","uid":"3f0e6a52-2c1b-4b7e-9d8f-0a1b2c3d4e5f",`)
	b.WriteString(`"groups":["system:serviceaccounts","system:serviceaccounts:kube-system","system:authenticated"]},`)
	b.WriteString(`"object":`)
	b.Write(pod)
	b.WriteString(`,"oldObject":null,"dryRun":`)
	b.WriteString(strconv.FormatBool(dryRun))
	b.WriteString(`,"options":{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1"}}}`)
	return b.Bytes()
}
