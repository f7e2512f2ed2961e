package loadtest

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// FloorDecode says how much of the review the floor webhook reads.
type FloorDecode string

// Floor decodings.
const (
	// FloorJSON decodes the review with encoding/json into the few fields
	// a webhook needs (which still scans the whole document, pod
	// included): the trivial webhook written the obvious way.
	FloorJSON FloorDecode = "json"
	// FloorNone only reads the body and finds the uid: the cost of TLS,
	// HTTP and the body alone.
	FloorNone FloorDecode = "none"
)

// FloorHandler is the no-op admission webhook the load scenarios compare
// with: it allows every review, unchanged.
func FloorHandler(decode FloorDecode) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 7<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var uid string
		if decode == FloorJSON {
			var review struct {
				Request *struct {
					UID string `json:"uid"`
				} `json:"request"`
			}
			if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
				http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
				return
			}
			uid = review.Request.UID
		} else if uid, err = findUID(body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		out := make([]byte, 0, 128+len(uid))
		out = append(out, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":`...)
		out = strconv.AppendQuote(out, uid)
		out = append(out, `,"allowed":true}}`...)
		w.Header()["Content-Type"] = jsonType
		_, _ = w.Write(out)
	})
}

// findUID takes the first "uid" string after "request" without decoding:
// the API server writes the request's uid before the object.
func findUID(body []byte) (string, error) {
	const key = `"uid":"`
	at := indexAfter(body, `"request":`)
	if at < 0 {
		return "", errors.New("no request in the review")
	}
	i := indexAfter(body[at:], key)
	if i < 0 {
		return "", errors.New("no request uid in the review")
	}
	rest := body[at+i:]
	for j, c := range rest {
		if c == '"' {
			return string(rest[:j]), nil
		}
		if c == '\\' {
			break
		}
	}
	return "", errors.New("the request uid is not a plain string")
}

func indexAfter(b []byte, s string) int {
	i := bytes.Index(b, []byte(s))
	if i < 0 {
		return -1
	}
	return i + len(s)
}

// FloorServer is the floor webhook's HTTPS server, with the TLS settings the
// product uses (TLS 1.2 or later, HTTP/1.1 only) and the certificate it is
// given.
func FloorServer(cert tls.Certificate, decode FloorDecode) *http.Server {
	return &http.Server{
		Handler:           FloorHandler(decode),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      40 * time.Second,
		IdleTimeout:       120 * time.Second,
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{cert},
			NextProtos:   []string{"http/1.1"},
		},
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
}

// ServeFloor serves the floor on ln until the server is closed.
func ServeFloor(srv *http.Server, ln net.Listener) error {
	err := srv.ServeTLS(ln, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
