// Package e2e tests the webhook end to end against a real kube-apiserver:
// etcd, kube-apiserver and kube-controller-manager run as local processes
// (src/testenv/kubetest), three redis-server nodes back the semaphore
// (src/testenv/redistest), and the real webhook binary (src/testenv/webhooktest) serves the
// MutatingWebhookConfiguration that the Helm chart installs, repointed at it
// by URL. Everything a user does goes through the real kubectl.
//
// The tests need the tools `make tools` builds (kube-apiserver,
// kube-controller-manager, kubectl) and Debian's etcd and redis-server;
// `make test` installs them. `go test -short` skips them.
//
// Subpackages hold what the tests and the demo (hack/demo) share: running
// kubectl, applying the CRDs, installing the chart with the Helm SDK, and
// repointing the webhook configuration.
package e2e
