package admission

import (
	"fmt"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podObject is what the webhook reads of a pod, in the API's own types and
// under the API's own member names: the metadata and, of the spec, the
// containers' names and ports, host networking and the grace period. The
// decoder validates the rest of the pod and skips it. Decoding a whole
// corev1.Pod instead costs more than the guardrail on annotated pods
// allows (docs/performance.md); TestPodObjectMirrorsThePodAPI keeps the
// names and types those of corev1.Pod.
type podObject struct {
	metav1.ObjectMeta `json:"metadata"`
	Spec              podSpec `json:"spec"`
}

// podSpec is the part of corev1.PodSpec the webhook reads.
type podSpec struct {
	Containers                    []containerPorts `json:"containers"`
	InitContainers                []containerPorts `json:"initContainers"`
	HostNetwork                   bool             `json:"hostNetwork"`
	TerminationGracePeriodSeconds *int64           `json:"terminationGracePeriodSeconds"`
}

// containerPorts is the part of corev1.Container the webhook reads: the
// name, the ports and the lifecycle hooks (a native sidecar's pod gets a
// preStop hook on every app container without one).
type containerPorts struct {
	Name      string                 `json:"name"`
	Ports     []corev1.ContainerPort `json:"ports"`
	Lifecycle *corev1.Lifecycle      `json:"lifecycle"`
}

// classification is what the webhook makes of a review before planning:
// either a pod to inject (pod set) or a reason to pass the review unchanged.
type classification struct {
	pod *podObject
	// passed is why the review passes unchanged when pod is nil.
	passed reason
	// warning is shown to the user of a pod that passes unchanged.
	warning string
	// decodeErr is why an opted-in pod could not be decoded; pod is nil.
	decodeErr error
}

// classify tells the pods the webhook injects from the reviews it passes
// unchanged: only an opted-in Pod CREATE is the webhook's.
func classify(req *podRequest) classification {
	k := req.Kind
	if k.Group != "" || k.Version != "v1" || k.Kind != "Pod" || req.SubResource != "" || req.Object == nil {
		return classification{passed: reasonNotPod}
	}
	if req.Operation != admissionv1.Create {
		return classification{passed: reasonNotCreate}
	}
	pod := req.Object
	optIn, hasOptIn := pod.Annotations[AnnotationOptIn]
	switch {
	case optIn == "true":
	case hasOptIn && optIn != "false" && optIn != "":
		return classification{passed: reasonNotOptedIn, warning: fmt.Sprintf(
			"annotation %s is %q, not \"true\": the pod was admitted without the metrics proxy; only the exact value \"true\" opts in",
			AnnotationOptIn, optIn)}
	default:
		return classification{passed: reasonNotOptedIn}
	}
	if pod.Annotations[AnnotationInjected] == "true" {
		return classification{passed: reasonAlreadyInjected}
	}
	if req.objectErr != nil {
		return classification{decodeErr: req.objectErr}
	}
	return classification{pod: pod}
}

// displayName is the pod's name for messages and logs: the name, or the
// generateName prefix the API server has not completed yet.
func displayName(pod *podObject) string {
	if pod.Name != "" {
		return pod.Name
	}
	return pod.GenerateName
}
