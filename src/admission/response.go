package admission

import (
	"encoding/json"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// denial is an admission refusal: the HTTP-like code the API server passes
// on to the client, the metrics reason, and the message kubectl shows.
type denial struct {
	code    int32
	reason  reason
	message string
}

// answer is the AdmissionResponse of a decision, without its uid.
type answer struct {
	denial   *denial // nil: allowed
	patch    []byte
	warnings []string
}

// encodeReview encodes the AdmissionReview v1 that carries the answer.
func encodeReview(uid types.UID, a *answer) ([]byte, error) {
	resp := &admissionv1.AdmissionResponse{UID: uid, Allowed: a.denial == nil, Warnings: a.warnings}
	if a.denial != nil {
		resp.Result = &metav1.Status{
			Status: metav1.StatusFailure, Message: a.denial.message,
			Reason: statusReason(a.denial.code), Code: a.denial.code,
		}
	}
	if len(a.patch) > 0 {
		resp.Patch = a.patch
		resp.PatchType = pointerTo(admissionv1.PatchTypeJSONPatch)
	}
	return json.Marshal(&admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: reviewAPIVersion, Kind: "AdmissionReview"},
		Response: resp,
	})
}

// statusReason is the metav1.StatusReason for a denial's code; kubectl
// prints it in parentheses before the message.
func statusReason(code int32) metav1.StatusReason {
	switch code {
	case 400:
		return metav1.StatusReasonBadRequest
	case 403:
		return metav1.StatusReasonForbidden
	case 429:
		return metav1.StatusReasonTooManyRequests
	case 503:
		return metav1.StatusReasonServiceUnavailable
	}
	return metav1.StatusReasonInternalError
}
