// Package metricsproxy forwards Prometheus scrapes to the app in the same pod
// and keeps the last good answer, so that a terminating pod can still answer
// its final scrape after the app has gone.
//
// Responses are streamed: the body goes to the client as it arrives from the
// app and, for the metrics path, into one buffer that becomes the cached copy
// when the body was read whole. Nothing is decompressed or re-encoded, so the
// bytes Prometheus receives are the bytes the app wrote, whatever format and
// encoding it negotiated.
package metricsproxy
