//! The LlamaNet test bed: a real Kubernetes control plane (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler, built from the Go
//! module proxy by `scripts/build-k8s.sh`) on loopback, plus a local node
//! whose "container runtime" starts each pod's containers as local processes
//! with their own loopback IP, volumes in a private mount namespace, probes,
//! restarts and status written back.
//!
//! [`Cluster`] ties them together for tests and for `llamanet-cluster up`.

pub mod cluster;
pub mod control_plane;
pub mod kubelet;
pub mod machine;
pub mod process;
pub mod real_node;
pub mod testing;

pub use cluster::{Cluster, ClusterConfig, Runtime};
pub use control_plane::{ControlPlane, ControlPlaneConfig, K8S_VERSION};
pub use kubelet::{ImageCatalog, LocalNode, LocalNodeConfig, PodIpPool};
