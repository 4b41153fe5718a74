"""Dev/CI single-node Kubernetes cluster and local image builder (see docs/cluster.md)."""
