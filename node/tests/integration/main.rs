//! The node's integration tests: its HTTP API, engine, forwarding and weights, with the real model.
//!
//! One test binary per crate, one module per subject: each binary links the whole dependency
//! graph and compiles its own copies of the generic code it uses (tokio, serde, hyper, kube),
//! so the test bed's nine files as nine binaries took about 190 s of CPU to build, and as
//! one, 44 s. `scripts/run-tests.py` still runs every module in a process of its own, as
//! the separate binaries ran: `cargo test --test integration MODULE::` does the same by hand.

mod api_server;
mod engine_batching;
mod engine_smoke;
mod route_forward;
mod swarm_hostile;
mod tools_check;
mod weights_swarm;
