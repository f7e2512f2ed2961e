package kubetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// maxResponseBytes bounds what Do reads from one response; a list of every
// Pod in a test namespace stays far below it.
const maxResponseBytes = 64 << 20

// bearerTransport adds the admin token to every request.
type bearerTransport struct {
	token string
	next  http.RoundTripper
}

func (t *bearerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+t.token)
	return t.next.RoundTrip(req)
}

// HTTPClient returns a client that trusts the API server's CA and sends the
// admin token, for requests Do does not cover (watches, raw bodies).
func (cp *ControlPlane) HTTPClient() *http.Client {
	return cp.client
}

// APIError is a non-2xx answer of the API server, with the reason and message
// of the metav1.Status it sent (for an admission denial, the webhook's
// message).
type APIError struct {
	Method     string
	Path       string
	StatusCode int
	// Reason is the Status reason, e.g. "AlreadyExists", "NotFound",
	// "Forbidden"; empty when the body was not a Status.
	Reason  string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s %s was answered with %d %s: %s", e.Method, e.Path, e.StatusCode, e.Reason, e.Message)
}

// IsAlreadyExists tells whether err is an APIError with status 409.
func IsAlreadyExists(err error) bool {
	var apiErr *APIError
	return errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusConflict
}

// IsNotFound tells whether err is an APIError with status 404.
func IsNotFound(err error) bool {
	var apiErr *APIError
	return errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusNotFound
}

// Do sends one request to the API server and decodes a JSON answer into out
// (when out is not nil). path is absolute, e.g. "/api/v1/namespaces". body
// may be nil, []byte or string (sent as is), or any value (sent as JSON);
// PATCH bodies are sent as JSON merge patches. A non-2xx answer is an
// *APIError.
func (cp *ControlPlane) Do(ctx context.Context, method, path string, body, out any) error {
	var reader io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		reader = bytes.NewReader(b)
	case string:
		reader = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			return fmt.Errorf("cannot encode the body of %s %s: %w", method, path, err)
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, cp.URL+path, reader)
	if err != nil {
		return fmt.Errorf("cannot build the request %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if reader != nil {
		contentType := "application/json"
		if method == http.MethodPatch {
			contentType = "application/merge-patch+json"
		}
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := cp.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s failed: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := readLimited(resp.Body)
	if err != nil {
		return fmt.Errorf("cannot read the answer to %s %s: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		apiErr := &APIError{Method: method, Path: path, StatusCode: resp.StatusCode}
		var status struct {
			Reason  string `json:"reason"`
			Message string `json:"message"`
		}
		if json.Unmarshal(data, &status) == nil && status.Message != "" {
			apiErr.Reason, apiErr.Message = status.Reason, status.Message
		} else {
			apiErr.Message = strings.TrimSpace(string(data))
		}
		return apiErr
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("cannot decode the answer to %s %s: %w", method, path, err)
		}
	}
	return nil
}

func readLimited(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxResponseBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxResponseBytes {
		return nil, fmt.Errorf("the answer is larger than %d bytes", maxResponseBytes)
	}
	return data, nil
}

// CreateNamespace creates a namespace with the given labels (nil for none)
// and its "default" ServiceAccount, which kube-controller-manager would
// create but which the ServiceAccount admission plugin needs before any Pod
// is admitted. Both may exist already.
func (cp *ControlPlane) CreateNamespace(ctx context.Context, name string, labels map[string]string) error {
	metadata := map[string]any{"name": name}
	if len(labels) > 0 {
		metadata["labels"] = labels
	}
	ns := map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}
	if err := cp.Do(ctx, http.MethodPost, "/api/v1/namespaces", ns, nil); err != nil && !IsAlreadyExists(err) {
		return fmt.Errorf("cannot create namespace %q: %w", name, err)
	}
	sa := map[string]any{
		"apiVersion": "v1",
		"kind":       "ServiceAccount",
		"metadata":   map[string]any{"name": "default"},
	}
	if err := cp.Do(ctx, http.MethodPost, "/api/v1/namespaces/"+name+"/serviceaccounts", sa, nil); err != nil && !IsAlreadyExists(err) {
		return fmt.Errorf("cannot create the default ServiceAccount of namespace %q: %w", name, err)
	}
	return nil
}

// Kubectl runs the kubectl built by hack/install-tools.sh against this
// control plane and returns its combined output; on failure the error holds
// that output too.
func (cp *ControlPlane) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	bin, err := Tool("kubectl")
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig=" + cp.KubeconfigPath}, args...)...)
	// kubectl may start credential or editor helpers; cancelling kills them
	// together with kubectl.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Env = append(filterEnv(os.Environ(), "KUBECONFIG="), "KUBECONFIG="+cp.KubeconfigPath)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %s failed (%v): %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}
