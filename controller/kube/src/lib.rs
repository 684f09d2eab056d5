//! Kubernetes provider, status writer, infra and leader election (issue 7).
