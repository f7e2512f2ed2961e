// Package charts holds the Helm chart of prometheus-metrics-proxy-hook
// (charts/prometheus-metrics-proxy-hook) and its tests: the chart is
// rendered with the Helm SDK for the defaults and every ci/ values file, the
// objects are decoded into Kubernetes API types and checked (restricted Pod
// Security Standard, selectors, NetworkPolicy flows, Redis addresses, the
// schema's rejections), and the chart README's values table is kept in sync
// with values.yaml:
//
//	go test ./charts -run TestREADME -update
package charts
