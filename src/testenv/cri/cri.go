// Package cri reads container statuses from a container runtime through the
// CRI, the API the kubelet itself uses, so that tests measure when containers
// ran with the runtime's own nanosecond timestamps instead of the times a
// poll happened to see them.
package cri

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Labels the kubelet puts on every container it creates.
const (
	LabelPodName       = "io.kubernetes.pod.name"
	LabelPodNamespace  = "io.kubernetes.pod.namespace"
	LabelPodUID        = "io.kubernetes.pod.uid"
	LabelContainerName = "io.kubernetes.container.name"
)

// Container is one container's status as the runtime reports it. A zero
// time means the runtime has not reached that point (not started, still
// running).
type Container struct {
	ID, Name              string
	PodNamespace, PodName string
	PodUID                string
	Attempt               uint32
	State                 string
	ExitCode              int32
	CreatedAt, StartedAt  time.Time
	FinishedAt            time.Time
}

// Exited says whether the runtime reports the container as exited: its
// FinishedAt is final then.
func (c Container) Exited() bool {
	return c.State == runtimeapi.ContainerState_CONTAINER_EXITED.String()
}

// Client talks to one runtime's CRI socket.
type Client struct {
	conn *grpc.ClientConn
	rt   runtimeapi.RuntimeServiceClient
}

// Dial connects to the CRI socket at path (a unix socket; nothing is sent
// until the first call).
func Dial(path string) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connecting to the CRI socket %s: %w", path, err)
	}
	return &Client{conn: conn, rt: runtimeapi.NewRuntimeServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// List returns the ids of the containers whose labels include every one of
// labels, exited ones too, until the kubelet removes them.
func (c *Client) List(ctx context.Context, labels map[string]string) ([]string, error) {
	resp, err := c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{
		Filter: &runtimeapi.ContainerFilter{LabelSelector: labels},
	})
	if err != nil {
		return nil, fmt.Errorf("CRI ListContainers %v: %w", labels, err)
	}
	ids := make([]string, 0, len(resp.GetContainers()))
	for _, ct := range resp.GetContainers() {
		ids = append(ids, ct.GetId())
	}
	return ids, nil
}

// Status returns one container's status with its timestamps.
func (c *Client) Status(ctx context.Context, id string) (Container, error) {
	resp, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		return Container{}, fmt.Errorf("CRI ContainerStatus %s: %w", id, err)
	}
	return fromStatus(resp.GetStatus()), nil
}

func fromStatus(s *runtimeapi.ContainerStatus) Container {
	l := s.GetLabels()
	return Container{
		ID: s.GetId(), Name: s.GetMetadata().GetName(), Attempt: s.GetMetadata().GetAttempt(),
		PodNamespace: l[LabelPodNamespace], PodName: l[LabelPodName], PodUID: l[LabelPodUID],
		State: s.GetState().String(), ExitCode: s.GetExitCode(),
		CreatedAt: unixNano(s.GetCreatedAt()), StartedAt: unixNano(s.GetStartedAt()), FinishedAt: unixNano(s.GetFinishedAt()),
	}
}

// unixNano is the time of a CRI timestamp, zero for 0 (not reached).
func unixNano(ns int64) time.Time {
	if ns <= 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
