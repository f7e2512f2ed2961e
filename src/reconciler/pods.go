package reconciler

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PodsByHolder answers the cached pods that carry the holder label with this
// value; the cache holds only labelled pods.
func (r *Reconciler) PodsByHolder(holder string) []*corev1.Pod {
	objs, err := r.informer.GetIndexer().ByIndex(holderIndex, holder)
	if err != nil {
		return nil
	}
	out := make([]*corev1.Pod, 0, len(objs))
	for _, obj := range objs {
		if pod, ok := obj.(*corev1.Pod); ok {
			out = append(out, pod)
		}
	}
	return out
}

// Pod answers a pod from the cache, or from the API server when the cache
// does not have it (a pod of the previous release carries no label).
func (r *Reconciler) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	if obj, ok, err := r.informer.GetIndexer().GetByKey(namespace + "/" + name); err == nil && ok {
		if pod, ok := obj.(*corev1.Pod); ok {
			return pod, nil
		}
	}
	pod, err := r.cfg.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading pod %s/%s: %w", namespace, name, err)
	}
	return pod, nil
}
