//! LlamaNet inference node.
//!
//! A node verifies and fetches its GGUF model ([`model`]), loads it into llama.cpp and
//! generates tokens ([`engine`], behind the default `engine` feature so that light users of
//! this library, such as the operator, build without a C++ toolchain), and logs through
//! `tracing` ([`logging`]). The `llamanet` binary in `main.rs` only parses the command line
//! and calls into these modules.

#[cfg(feature = "engine")]
pub mod engine;
pub mod logging;
pub mod model;
