"""Dev/CI single-node Kubernetes cluster and local image builder for streamjob (see docs/cluster.md)."""
