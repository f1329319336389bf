//! LlamaNet inference node.
//!
//! A node verifies and fetches its GGUF model ([`model`]), loads it into llama.cpp and
//! generates tokens ([`engine`], behind the default `engine` feature: without it the
//! `llamanet` binary links no llama.cpp and runs as a router, a sidecar, `monitor` or
//! `check`), and logs through `tracing` ([`logging`]). Requests reach the engine through
//! the OpenAI-compatible HTTP API ([`api`]), and every Prometheus metric lives in one registry
//! ([`metrics`]). Nodes find each other and their load through the [`swarm`]; [`route`]
//! serves each request here or forwards it to a peer; [`sidecar`] puts an engine running
//! beside the node (llama-server, vLLM) into the swarm; [`tools`] holds the `monitor` and
//! `check` commands. The `llamanet` binary in `main.rs` only parses the command line
//! and calls into these modules.

pub mod api;
pub mod cli;
pub mod engine;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod route;
pub mod sidecar;
/// The swarm lives in its own crate (`llamanet-swarm`) so that the operator can use it
/// without the node's HTTP server and engine; `crate::swarm` keeps naming it here.
pub use llamanet_swarm as swarm;
pub mod tools;
pub mod weights;
