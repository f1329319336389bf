//! Model weights through the swarm: replicas fetch a model file from the peers that already
//! have it, and the origin (a URL) only serves what no peer can.
//!
//! - A node that loaded a model whose SHA-256 it checked shares the file ([`Seeder`]): it
//!   announces the SHA-256 in the DHT (provider records, sharded like models' ones) and
//!   answers requests for the file's [`Manifest`] and its chunks on [`WEIGHTS_PROTOCOL`]
//!   streams, within an upload cap and pace ([`SeedPolicy`]).
//! - `llamanet fetch` ([`fetch`]) finds those peers, fetches chunks from several at once,
//!   checks each against the manifest, resumes an interrupted fetch, falls back to the URL
//!   for what no peer gives, and renames the file into place only once its SHA-256 is right.
//!
//! Only members of a private swarm take part: the streams ride connections inside the
//! swarm's pre-shared key, and a node in a public swarm shares nothing.

pub mod fetch;
pub mod manifest;
pub mod seed;
pub mod wire;

pub use fetch::{FetchOptions, FetchReport, fetch};
pub use manifest::{CHUNK_BYTES, Manifest};
pub use seed::{SeedPolicy, Seeder};
pub use wire::WEIGHTS_PROTOCOL;
