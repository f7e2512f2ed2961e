package leaseapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// Client calls the lease API of any webhook replica.
type Client struct {
	base      string
	http      *http.Client
	tokenFile string
}

// UseTokenFile makes every call send the token in path as "Authorization:
// Bearer". The file is read on every call, because the kubelet replaces a
// projected token long before it expires. Call it before the first call.
func (c *Client) UseTokenFile(path string) { c.tokenFile = path }

// NewClient builds a client for baseURL (e.g. https://pmph.pmph-system.svc:443)
// that trusts only the CA bundle caPEM; an empty bundle means the system
// roots. timeout bounds each request.
func NewClient(baseURL string, caPEM []byte, timeout time.Duration) (*Client, error) {
	if !strings.HasPrefix(baseURL, "https://") && !strings.HasPrefix(baseURL, "http://") {
		return nil, fmt.Errorf("lease API URL %q must start with https://", baseURL)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("the lease API CA bundle holds no PEM certificate")
		}
		tlsCfg.RootCAs = pool
	}
	transport := &http.Transport{
		TLSClientConfig:     tlsCfg,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     90 * time.Second,
		// The webhook serves HTTP/1.1 unless told otherwise; asking for
		// HTTP/2 would only cost a failed negotiation.
		ForceAttemptHTTP2: false,
	}
	return &Client{
		base: strings.TrimSuffix(baseURL, "/"),
		http: &http.Client{Transport: transport, Timeout: timeout},
	}, nil
}

// Error is a non-2xx answer of the lease API.
type Error struct {
	Status  int
	Reason  string
	Cause   string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("lease API answered %d %s: %s", e.Status, e.Reason, e.Message)
}

// Sentinels matched by errors.Is on an *Error.
var (
	// ErrNotFound: the lease expired or was released; it is gone for good.
	ErrNotFound = errors.New("lease not found")
	// ErrConflict: another holder owns the slot.
	ErrConflict = errors.New("slot held by another holder")
	// ErrFull: acquire found no free slot.
	ErrFull = errors.New("semaphore full")
)

func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Status == http.StatusNotFound
	case ErrConflict:
		return e.Status == http.StatusConflict && e.Reason == ReasonConflict
	case ErrFull:
		return e.Status == http.StatusConflict && e.Reason == ReasonFull
	}
	return false
}

// Retryable reports whether an error from this client is worth another try:
// transport failures and 5xx/429 answers are, other 4xx answers are not.
func Retryable(err error) bool {
	var apiErr *Error
	if errors.As(err, &apiErr) {
		return apiErr.Status >= 500 || apiErr.Status == http.StatusTooManyRequests
	}
	return err != nil && !errors.Is(err, context.Canceled)
}

// Renew extends the lease; the answer is how long it now lives.
func (c *Client) Renew(ctx context.Context, l Lease) (time.Duration, error) {
	var resp LeaseResponse
	if err := c.post(ctx, RenewPath, l, &resp); err != nil {
		return 0, err
	}
	return seconds(resp.TTLSeconds), nil
}

// Release gives the slot back; released is false when there was nothing of
// this holder's left to release.
func (c *Client) Release(ctx context.Context, l Lease) (bool, error) {
	var resp ReleaseResponse
	if err := c.post(ctx, ReleasePath, l, &resp); err != nil {
		return false, err
	}
	return resp.Released, nil
}

// Acquire takes a slot again with l's holder id (l.Slot is ignored), for a
// sidecar whose lease expired before it started.
func (c *Client) Acquire(ctx context.Context, l Lease, size int) (Lease, time.Duration, error) {
	var resp LeaseResponse
	if err := c.post(ctx, AcquirePath, AcquireRequest{Lease: l, Size: size}, &resp); err != nil {
		return Lease{}, 0, err
	}
	return resp.Lease, seconds(resp.TTLSeconds), nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func (c *Client) post(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building the lease API request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if c.tokenFile != "" {
		token, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return fmt.Errorf("reading the lease API token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("calling the lease API at %s: %w", c.base+path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("reading the lease API answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e ErrorResponse
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
		}
		return &Error{Status: resp.StatusCode, Reason: e.Reason, Cause: e.Cause, Message: e.Error}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decoding the lease API answer: %w", err)
	}
	return nil
}
