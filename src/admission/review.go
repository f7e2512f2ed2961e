package admission

import (
	"errors"
	"fmt"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
)

// reviewAPIVersion is the only AdmissionReview version served; the webhook
// configuration asks the API server for it.
const reviewAPIVersion = "admission.k8s.io/v1"

// errBadReview is wrapped by every error that makes the request a 400.
var errBadReview = errors.New("bad admission review")

// podReview is an AdmissionReview v1 whose object is decoded as a pod in
// the same pass as the review.
type podReview struct {
	metav1.TypeMeta `json:",inline"`
	Request         *podRequest `json:"request"`
}

// podRequest is an AdmissionRequest with its object decoded as a pod: the
// pod is most of a review's bytes, and decoding it again from the raw
// object would read it twice more.
type podRequest struct {
	admissionv1.AdmissionRequest `json:",inline"`
	// Object shadows AdmissionRequest.Object; nil when absent or null.
	Object *podObject `json:"object"`
	// objectErr is why the object could not be decoded as a pod; Object
	// then holds what could be.
	objectErr error
}

// decodeReview decodes an AdmissionReview v1 and returns its request.
//
// Member names must match exactly, as the API server writes them and as
// the patch's JSON pointers address them. Members k8s.io/api does not know
// are ignored: an API server newer than this build sends some, and with
// failurePolicy Fail refusing them would refuse every pod.
func decodeReview(body []byte) (*podRequest, error) {
	var rv podReview
	if err := kjson.UnmarshalCaseSensitivePreserveInts(body, &rv); err != nil {
		return decodeReviewThenObject(body)
	}
	if err := checkEnvelope(rv.TypeMeta, rv.Request != nil, rv.Request != nil && rv.Request.UID != ""); err != nil {
		return nil, err
	}
	return rv.Request, nil
}

// decodeReviewThenObject decodes a review that does not decode in one pass:
// the review first, which makes the request a 400 if it is malformed, then
// its object, whose error is the pod's.
func decodeReviewThenObject(body []byte) (*podRequest, error) {
	var rv admissionv1.AdmissionReview
	if err := kjson.UnmarshalCaseSensitivePreserveInts(body, &rv); err != nil {
		return nil, fmt.Errorf("%w: the body is not a valid AdmissionReview: %w", errBadReview, jsonError(err))
	}
	if err := checkEnvelope(rv.TypeMeta, rv.Request != nil, rv.Request != nil && rv.Request.UID != ""); err != nil {
		return nil, err
	}
	req := &podRequest{AdmissionRequest: *rv.Request}
	if raw := rv.Request.Object.Raw; raw != nil {
		req.Object = &podObject{}
		// On a field of the wrong type the decoder goes on and reports
		// the first such error at the end: the annotations are read even
		// from a pod it cannot decode whole.
		req.objectErr = kjson.UnmarshalCaseSensitivePreserveInts(raw, req.Object)
	}
	req.AdmissionRequest.Object.Raw = nil
	return req, nil
}

func checkEnvelope(tm metav1.TypeMeta, hasRequest, hasUID bool) error {
	switch {
	case tm.APIVersion != "" && tm.APIVersion != reviewAPIVersion:
		return fmt.Errorf("%w: apiVersion %q is not served; send %s", errBadReview, tm.APIVersion, reviewAPIVersion)
	case tm.Kind != "" && tm.Kind != "AdmissionReview":
		return fmt.Errorf("%w: kind %q is not AdmissionReview", errBadReview, tm.Kind)
	case !hasRequest:
		return fmt.Errorf("%w: the AdmissionReview has no request", errBadReview)
	case !hasUID:
		return fmt.Errorf("%w: the AdmissionReview request has no uid", errBadReview)
	}
	return nil
}

// maxJSONDepth is the nesting limit of the decoder (sigs.k8s.io/json, as
// encoding/json).
const maxJSONDepth = 10000

// jsonError says where a syntax error is, and names the nesting limit the
// decoder reports only as "exceeded max depth".
func jsonError(err error) error {
	if strings.Contains(err.Error(), "exceeded max depth") {
		return fmt.Errorf("the JSON is nested deeper than %d levels", maxJSONDepth)
	}
	if isSyntax, offset := kjson.SyntaxErrorOffset(err); isSyntax {
		return fmt.Errorf("%w at byte %d", err, offset)
	}
	return err
}
