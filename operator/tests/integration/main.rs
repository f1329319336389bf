//! The operator's integration tests: CRD, reconciler, heartbeats and scaling on the real local control plane.
//!
//! One test binary per crate, one module per subject: each binary links the whole dependency
//! graph and compiles its own copies of the generic code it uses (tokio, serde, hyper, kube),
//! so the test bed's nine files as nine binaries took about 190 s of CPU to build, and as
//! one, 44 s. `scripts/run-tests.py` still runs every module in a process of its own, as
//! the separate binaries ran: `cargo test --test integration MODULE::` does the same by hand.

mod common;
mod crd_file;
mod e2e;
mod external_engine;
mod real_nodes;
mod scale_from_zero;
mod swarm_peer;
mod weights;
