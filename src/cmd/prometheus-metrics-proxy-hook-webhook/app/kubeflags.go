package app

import (
	"flag"
	"time"
)

// kubeFlags are the flags of the webhook's access to the API server: the
// reconciler and its leader election.
type kubeFlags struct {
	kubeconfig, window, interval, electionNS, electionName string
}

func defineKubeFlags(fs *flag.FlagSet, f *kubeFlags) {
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file for the API server (empty: the in-cluster service account)")
	fs.StringVar(&f.window, "reconcile-window", "90s", "how long after its admission a slot may go without a pod before the reconciler releases it; keep it above the API server's request timeout")
	fs.StringVar(&f.interval, "reconcile-interval", "15s", "time between two comparisons of the leases with the pods")
	fs.StringVar(&f.electionNS, "leader-election-namespace", "", "namespace of the reconciler's coordination.k8s.io Lease (empty: POD_NAMESPACE, else the service account's)")
	fs.StringVar(&f.electionName, "leader-election-lease-name", "prometheus-metrics-proxy-hook-reconciler", "name of the reconciler's coordination.k8s.io Lease")
}

func parseKube(c *Config, f *flags, src sources) error {
	k := f.kube
	c.Kubeconfig, c.LeaderElectionNamespace, c.LeaderElectionLeaseName = k.kubeconfig, k.electionNS, k.electionName
	var err error
	if c.ReconcileWindow, err = duration(k.window, time.Second, 24*time.Hour); err != nil {
		return src.invalid("reconcile-window", k.window, err.Error())
	}
	if c.ReconcileInterval, err = duration(k.interval, 100*time.Millisecond, time.Hour); err != nil {
		return src.invalid("reconcile-interval", k.interval, err.Error())
	}
	if k.electionName == "" {
		return src.invalid("leader-election-lease-name", k.electionName, "must name the reconciler's Lease")
	}
	return nil
}
