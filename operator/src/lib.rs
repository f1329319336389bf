//! The LlamaNet operator: reconciles `InferenceNode` resources into inference pods and mirrors
//! the swarm's heartbeats into their status.
//!
//! The crate is split by concern, each part pure where it can be so it is testable without a
//! cluster: [`crd`] holds the resource types (the single source of the CRD yaml), [`children`]
//! turns a resource into the objects it owns (StatefulSet, Services), [`status`] turns what was
//! observed (pods, heartbeats) into conditions and a phase, with [`conditions`] keeping the
//! `metav1.Condition` rules. [`identity`] makes the replicas' swarm keys, [`heartbeat`] holds
//! the newest heartbeat of every replica, and [`reconcile`] is the only part that talks to the
//! API server. [`config`] is what the command line configures; `main.rs` wires it together.

pub mod children;
pub mod conditions;
pub mod config;
pub mod crd;
pub mod error;
pub mod heartbeat;
pub mod identity;
pub mod reconcile;
pub mod status;

pub use error::{Error, Result};
