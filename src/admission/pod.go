package admission

import (
	"fmt"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
)

// classification is what the webhook makes of a review before planning:
// either a pod to inject (pod set) or a reason to pass the review unchanged.
type classification struct {
	pod *corev1.Pod
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
func displayName(pod *corev1.Pod) string {
	if pod.Name != "" {
		return pod.Name
	}
	return pod.GenerateName
}
