//! The LlamaNet test bed: a real Kubernetes cluster on one machine without a Docker engine.
//! The control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) and
//! real nodes (containerd, runc, CNI, the kubelet and kube-proxy, all built from the Go
//! module proxy by `scripts/build-tools.sh`), each node in a machine of its own network,
//! mount and PID namespaces, running the images `scripts/build-images.sh` builds from
//! `deploy/docker/`.
//!
//! [`Cluster`] ties them together for tests and for `llamanet-cluster up`.

pub mod cluster;
pub mod control_plane;
pub mod machine;
pub mod process;
pub mod real_node;
pub mod testing;
pub mod tools;

pub use cluster::{Cluster, ClusterConfig};
pub use control_plane::{ControlPlane, ControlPlaneConfig, K8S_VERSION};
