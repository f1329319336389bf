//! The heartbeat record every node gossips, and its signed envelope.
//!
//! A node reports what it serves and how busy it is as a [`NodeStatus`]; the swarm stamps it
//! with the node's peer id, a sequence number and times into a [`Heartbeat`], and signs the
//! serialized heartbeat with the node's libp2p key into a [`SignedHeartbeat`]. The envelope
//! carries the public key, so anyone holding the bytes (a peer, the operator, a tool reading
//! `/v1/swarm`) can check who wrote them without asking the network.
//!
//! Verification ([`SignedHeartbeat::verify`]) checks the size, the signature, that the
//! signing key's peer id is the peer id the heartbeat claims and, at a gossip receiver, that it
//! is also the gossipsub message source: a node can only speak for itself. Then
//! [`check_bounds`]: a signature proves who wrote a heartbeat, not that what it says is sane,
//! so every peer-supplied list, string and figure is bounded ([`MAX_MODELS`], model ids of at
//! most [`MAX_MODEL_ID`] characters from a fixed set, finite non-negative figures...).
//! Everything rejected is named by a [`RejectReason`] so it can be counted per reason.

use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};
use serde::{Deserialize, Serialize};

/// Largest envelope accepted (a heartbeat with [`MAX_MODELS`] models is under 4 KiB).
pub const MAX_ENVELOPE_BYTES: usize = 8 * 1024;

/// Most models one heartbeat may announce.
pub const MAX_MODELS: usize = 16;

/// Longest model id, in characters (ASCII letters, digits and `._-:/@+`).
pub const MAX_MODEL_ID: usize = 128;

/// Most endpoints, and the longest endpoint URL.
pub const MAX_ENDPOINTS: usize = 4;
pub const MAX_URL: usize = 256;

/// Most swarm addresses one heartbeat may carry, and the longest one.
pub const MAX_SWARM_ADDRS: usize = crate::addresses::MAX_ADDRESSES;
pub const MAX_SWARM_ADDR: usize = 256;

/// Longest free-text field (version, cluster, zone, pod, resource names, quantization,
/// fingerprint).
pub const MAX_LABEL: usize = 128;

/// Prefix of the signed bytes, so a heartbeat signature can never be replayed as a signature
/// over anything else the same key signs (gossipsub messages, identify records).
const SIGNING_DOMAIN: &[u8] = b"llamanet-heartbeat/1:";

/// One model a node serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model id clients put in requests (`"model": ...`).
    pub id: String,
    /// Context size in tokens per slot.
    #[serde(default)]
    pub context_size: u32,
    /// Quantization label, e.g. `Q4_K_M`; empty when unknown.
    #[serde(default)]
    pub quantization: String,
    /// The model file's fingerprint (`llamanet_node::model::fingerprint`); empty when unknown (an
    /// engine behind a sidecar). Streams continue only between equal fingerprints.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
}

/// Which `InferenceNode` resource (and pod) a node belongs to, when the operator started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceNodeRef {
    pub namespace: String,
    pub name: String,
}

/// A model nobody serves right now that its operator starts on request: an InferenceNode
/// scaled to zero (or waking). The operator that owns the resource advertises it in its own
/// heartbeats; a node that gets a request for it asks that operator to wake it (see
/// [`crate::wake`]) and holds the request meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdModel {
    /// The model id clients ask for.
    pub id: String,
    /// The resource the advertiser would scale up.
    pub inference_node: InferenceNodeRef,
}

/// What a node reports about itself: everything in a heartbeat except what the swarm stamps.
///
/// The serving code owns this and updates it (see `SwarmHandle::update_status`); the swarm
/// publishes the latest value every interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// HTTP endpoints of the OpenAI API, e.g. `http://10.0.0.7:8080`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Models served here; empty for a router-only node.
    #[serde(default)]
    pub models: Vec<ModelInfo>,
    #[serde(default)]
    pub slots_busy: u32,
    #[serde(default)]
    pub slots_total: u32,
    /// Requests waiting for a free slot.
    #[serde(default)]
    pub queue_depth: u32,
    /// Recent generation throughput over all slots.
    #[serde(default)]
    pub tokens_per_second: f64,
    /// Median time to first token, milliseconds.
    #[serde(default)]
    pub ttft_p50_ms: f64,
    /// Program version.
    #[serde(default)]
    pub version: String,
    /// Cluster label (which Kubernetes cluster or site).
    #[serde(default)]
    pub cluster: String,
    /// Zone label.
    #[serde(default)]
    pub zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_node: Option<InferenceNodeRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Whether the node can serve right now (model loaded, engine alive).
    #[serde(default)]
    pub healthy: bool,
    /// Models this peer (an operator) can wake; empty for nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cold: Vec<ColdModel>,
}

impl NodeStatus {
    /// Whether this node serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m.id == model)
    }

    /// Load in `[0, ∞)`: busy slots plus queue over total slots; what "least loaded" compares.
    /// A node without slots (router only) counts as infinitely loaded for serving. Summed in
    /// `f64`: figures near `u32::MAX` make a peer look busy, never (by wrapping) idle.
    pub fn load(&self) -> f64 {
        if self.slots_total == 0 {
            return f64::INFINITY;
        }
        (f64::from(self.slots_busy) + f64::from(self.queue_depth)) / f64::from(self.slots_total)
    }
}

/// A heartbeat: a node's status stamped with who sent it and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender; must match the signing key.
    #[serde(with = "peer_id_string")]
    pub peer_id: PeerId,
    /// Increases by one per heartbeat within one run of the sender.
    pub seq: u64,
    /// When the sender's current run started (Unix ms): together with `seq` it orders the
    /// heartbeats of a peer across restarts, so a replayed old heartbeat is never "newer".
    pub started_at_ms: u64,
    /// When this heartbeat was made (Unix ms, sender's clock).
    pub timestamp_ms: u64,
    /// The sender's heartbeat interval; receivers expire the entry after a few of these.
    pub interval_ms: u64,
    /// Seconds since the sender started.
    pub uptime_s: u64,
    /// Where the sender's swarm listens (multiaddrs, without `/p2p`), in its own words: at
    /// most [`MAX_SWARM_ADDRS`]. Dialers try them besides what the DHT remembers, so a peer
    /// that moved (a pod rescheduled) is reached at its new address at once (see
    /// `signed_addresses.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub swarm_addrs: Vec<String>,
    #[serde(flatten)]
    pub status: NodeStatus,
}

impl Heartbeat {
    /// The ordering key of a peer's heartbeats: later runs first by start time, then sequence.
    pub fn order(&self) -> (u64, u64) {
        (self.started_at_ms, self.seq)
    }
}

/// A heartbeat as it travels: the exact serialized bytes that were signed, the signer's public
/// key and the signature. JSON so that tools and people can read it as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHeartbeat {
    /// The heartbeat as JSON text, exactly as signed (re-serializing could change the bytes).
    pub payload: String,
    /// The signer's public key, libp2p protobuf encoding, hex.
    pub public_key: String,
    /// Signature over `SIGNING_DOMAIN ++ payload`, hex.
    pub signature: String,
}

/// Why a heartbeat was rejected; the label doubles as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Not a parseable envelope or heartbeat.
    Malformed,
    /// The public key does not decode.
    BadPublicKey,
    /// The signature does not verify with the enclosed key.
    BadSignature,
    /// The heartbeat claims a peer id other than the signing key's.
    PeerIdMismatch,
    /// Validly signed by someone other than the gossipsub message source (a relayed copy is
    /// fine, but the message's origin must be the heartbeat's author).
    SourceMismatch,
    /// Larger than [`MAX_ENVELOPE_BYTES`].
    TooLarge,
    /// Signed, but says something out of bounds (see [`check_bounds`]).
    OutOfBounds,
    /// A peer's heartbeats come far faster than its announced interval allows.
    TooFrequent,
    /// A new peer while the peer table is full.
    TableFull,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::Malformed,
        RejectReason::BadPublicKey,
        RejectReason::BadSignature,
        RejectReason::PeerIdMismatch,
        RejectReason::SourceMismatch,
        RejectReason::TooLarge,
        RejectReason::OutOfBounds,
        RejectReason::TooFrequent,
        RejectReason::TableFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::BadPublicKey => "bad_public_key",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::PeerIdMismatch => "peer_id_mismatch",
            RejectReason::SourceMismatch => "source_mismatch",
            RejectReason::TooLarge => "too_large",
            RejectReason::OutOfBounds => "out_of_bounds",
            RejectReason::TooFrequent => "too_frequent",
            RejectReason::TableFull => "table_full",
        }
    }

    /// Index into per-reason counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SignedHeartbeat {
    /// Serializes and signs `heartbeat` with `key`. The heartbeat's `peer_id` should be the
    /// key's; `verify` rejects it otherwise.
    pub fn sign(heartbeat: &Heartbeat, key: &Keypair) -> Self {
        let payload = serde_json::to_string(heartbeat).expect("heartbeats always serialize");
        let signature = key
            .sign(&signed_bytes(payload.as_bytes()))
            .expect("ed25519 signing does not fail");
        SignedHeartbeat {
            payload,
            public_key: hex::encode(key.public().encode_protobuf()),
            signature: hex::encode(signature),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes always serialize")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RejectReason> {
        serde_json::from_slice(bytes).map_err(|_| RejectReason::Malformed)
    }

    /// Checks the envelope and returns the heartbeat it vouches for.
    ///
    /// `source` is the gossipsub message source when the heartbeat came over gossip; pass
    /// `None` where there is no transport-level author (e.g. read from an HTTP snapshot).
    pub fn verify(&self, source: Option<&PeerId>) -> Result<Heartbeat, RejectReason> {
        let key_bytes = hex::decode(&self.public_key).map_err(|_| RejectReason::BadPublicKey)?;
        let key =
            PublicKey::try_decode_protobuf(&key_bytes).map_err(|_| RejectReason::BadPublicKey)?;
        let signature = hex::decode(&self.signature).map_err(|_| RejectReason::BadSignature)?;
        if !key.verify(&signed_bytes(self.payload.as_bytes()), &signature) {
            return Err(RejectReason::BadSignature);
        }
        let heartbeat: Heartbeat =
            serde_json::from_str(&self.payload).map_err(|_| RejectReason::Malformed)?;
        let signer = key.to_peer_id();
        if heartbeat.peer_id != signer {
            return Err(RejectReason::PeerIdMismatch);
        }
        if source.is_some_and(|source| *source != signer) {
            return Err(RejectReason::SourceMismatch);
        }
        Ok(heartbeat)
    }
}

/// Decodes and verifies gossiped bytes in one step, bounds included.
pub fn verify_bytes(bytes: &[u8], source: Option<&PeerId>) -> Result<Heartbeat, RejectReason> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(RejectReason::TooLarge);
    }
    let heartbeat = SignedHeartbeat::from_bytes(bytes)?.verify(source)?;
    check_bounds(&heartbeat)?;
    Ok(heartbeat)
}

/// Whether `id` may be a model id: 1 to [`MAX_MODEL_ID`] characters, ASCII letters, digits
/// and `._-:/@+` (what model names on hubs and in GGUF files use), nothing that could break
/// a log line, a metric label or a URL.
pub fn valid_model_id(id: &str) -> bool {
    (1..=MAX_MODEL_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/@+".contains(&b))
}

/// Checks what a (validly signed) heartbeat says against the bounds in the module docs.
pub fn check_bounds(heartbeat: &Heartbeat) -> Result<(), RejectReason> {
    let status = &heartbeat.status;
    let label = |text: &str| text.len() <= MAX_LABEL;
    let figure = |value: f64| value.is_finite() && value >= 0.0;
    let fine = status.models.len() <= MAX_MODELS
        && status
            .models
            .iter()
            .all(|m| valid_model_id(&m.id) && label(&m.quantization) && label(&m.fingerprint))
        && status.endpoints.len() <= MAX_ENDPOINTS
        && status
            .endpoints
            .iter()
            .all(|e| e.len() <= MAX_URL && (e.starts_with("http://") || e.starts_with("https://")))
        && [&status.version, &status.cluster, &status.zone]
            .iter()
            .all(|text| label(text))
        && status.pod.as_deref().is_none_or(label)
        && status
            .inference_node
            .as_ref()
            .is_none_or(|r| label(&r.namespace) && label(&r.name))
        && status.cold.len() <= MAX_MODELS
        && status.cold.iter().all(|c| {
            valid_model_id(&c.id)
                && label(&c.inference_node.namespace)
                && label(&c.inference_node.name)
        })
        && figure(status.tokens_per_second)
        && figure(status.ttft_p50_ms)
        && heartbeat.swarm_addrs.len() <= MAX_SWARM_ADDRS
        && heartbeat
            .swarm_addrs
            .iter()
            .all(|a| a.len() <= MAX_SWARM_ADDR && a.parse::<libp2p::Multiaddr>().is_ok());
    if fine {
        Ok(())
    } else {
        Err(RejectReason::OutOfBounds)
    }
}

fn signed_bytes(payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SIGNING_DOMAIN.len() + payload.len());
    bytes.extend_from_slice(SIGNING_DOMAIN);
    bytes.extend_from_slice(payload);
    bytes
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Peer ids as their usual base58 text in JSON.
mod peer_id_string {
    use libp2p::PeerId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &PeerId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PeerId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Heartbeats for tests: this crate's and other crates' (always compiled, like `testing`).
pub mod samples {
    use super::*;

    /// A heartbeat of `peer_id` with sequence number `seq`: one model, one of four slots busy.
    pub fn sample(peer_id: PeerId, seq: u64) -> Heartbeat {
        Heartbeat {
            peer_id,
            seq,
            started_at_ms: 1_700_000_000_000,
            timestamp_ms: 1_700_000_000_000 + seq * 2000,
            interval_ms: 2000,
            uptime_s: seq * 2,
            swarm_addrs: vec!["/ip4/10.0.0.7/tcp/4001".into()],
            status: NodeStatus {
                endpoints: vec!["http://127.0.0.1:8080".into()],
                models: vec![ModelInfo {
                    id: "qwen2.5-0.5b".into(),
                    context_size: 4096,
                    quantization: "Q4_K_M".into(),
                    fingerprint: String::new(),
                }],
                slots_busy: 1,
                slots_total: 4,
                queue_depth: 0,
                tokens_per_second: 42.5,
                ttft_p50_ms: 80.0,
                version: "0.1.0".into(),
                cluster: "east".into(),
                zone: "a".into(),
                inference_node: Some(InferenceNodeRef {
                    namespace: "default".into(),
                    name: "qwen".into(),
                }),
                pod: Some("qwen-0".into()),
                healthy: true,
                cold: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::samples::sample;
    use super::*;

    #[test]
    fn signed_heartbeat_round_trips() {
        let key = Keypair::generate_ed25519();
        let me = key.public().to_peer_id();
        let heartbeat = sample(me, 7);
        let bytes = SignedHeartbeat::sign(&heartbeat, &key).to_bytes();
        assert_eq!(verify_bytes(&bytes, Some(&me)).unwrap(), heartbeat);
        assert_eq!(verify_bytes(&bytes, None).unwrap(), heartbeat);
    }

    #[test]
    fn json_uses_flat_readable_fields() {
        let key = Keypair::generate_ed25519();
        let heartbeat = sample(key.public().to_peer_id(), 1);
        let value = serde_json::to_value(&heartbeat).unwrap();
        assert_eq!(value["peer_id"], heartbeat.peer_id.to_string());
        assert_eq!(value["models"][0]["id"], "qwen2.5-0.5b");
        assert_eq!(value["inference_node"]["name"], "qwen");
        assert_eq!(value["slots_total"], 4);
    }

    #[test]
    fn heartbeat_claiming_another_peer_is_rejected() {
        let victim = Keypair::generate_ed25519().public().to_peer_id();
        let forger = Keypair::generate_ed25519();
        let bytes = SignedHeartbeat::sign(&sample(victim, 1), &forger).to_bytes();
        assert_eq!(
            verify_bytes(&bytes, None),
            Err(RejectReason::PeerIdMismatch)
        );
    }

    #[test]
    fn tampered_payload_fails_the_signature() {
        let key = Keypair::generate_ed25519();
        let me = key.public().to_peer_id();
        let mut envelope = SignedHeartbeat::sign(&sample(me, 1), &key);
        envelope.payload = envelope
            .payload
            .replace("\"slots_busy\":1", "\"slots_busy\":0");
        assert_eq!(envelope.verify(Some(&me)), Err(RejectReason::BadSignature));
    }

    #[test]
    fn swapped_key_fails_the_signature() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let mut envelope = SignedHeartbeat::sign(&sample(key.public().to_peer_id(), 1), &key);
        envelope.public_key = hex::encode(other.public().encode_protobuf());
        assert_eq!(envelope.verify(None), Err(RejectReason::BadSignature));
    }

    #[test]
    fn valid_heartbeat_from_the_wrong_gossip_source_is_rejected() {
        let key = Keypair::generate_ed25519();
        let relayer = Keypair::generate_ed25519().public().to_peer_id();
        let bytes = SignedHeartbeat::sign(&sample(key.public().to_peer_id(), 1), &key).to_bytes();
        assert_eq!(
            verify_bytes(&bytes, Some(&relayer)),
            Err(RejectReason::SourceMismatch)
        );
    }

    #[test]
    fn garbage_is_malformed_and_bad_keys_are_named() {
        assert_eq!(verify_bytes(b"{", None), Err(RejectReason::Malformed));
        let key = Keypair::generate_ed25519();
        let mut envelope = SignedHeartbeat::sign(&sample(key.public().to_peer_id(), 1), &key);
        envelope.public_key = "zz".into();
        assert_eq!(envelope.verify(None), Err(RejectReason::BadPublicKey));
    }

    #[test]
    fn load_counts_queue_and_router_only_nodes_never_win() {
        let mut status = sample(PeerId::random(), 1).status;
        status.slots_busy = 2;
        status.queue_depth = 2;
        assert_eq!(status.load(), 1.0);
        status.slots_total = 0;
        assert!(status.load().is_infinite());
        assert!(status.serves("qwen2.5-0.5b"));
        assert!(!status.serves("other"));
    }

    #[test]
    fn heartbeats_out_of_bounds_are_rejected_however_well_signed() {
        let key = Keypair::generate_ed25519();
        let me = key.public().to_peer_id();
        let signed = |change: &dyn Fn(&mut Heartbeat)| {
            let mut heartbeat = sample(me, 1);
            change(&mut heartbeat);
            SignedHeartbeat::sign(&heartbeat, &key).to_bytes()
        };
        assert!(verify_bytes(&signed(&|_| {}), Some(&me)).is_ok());
        fn model(id: &str) -> ModelInfo {
            ModelInfo {
                id: id.into(),
                ..ModelInfo::default()
            }
        }
        fn cold(id: &str, name: &str) -> ColdModel {
            ColdModel {
                id: id.into(),
                inference_node: InferenceNodeRef {
                    namespace: "ai".into(),
                    name: name.into(),
                },
            }
        }
        type Change = Box<dyn Fn(&mut Heartbeat)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "17 models",
                Box::new(|h| h.status.models = (0..17).map(|i| model(&format!("m{i}"))).collect()),
            ),
            (
                "an empty model id",
                Box::new(move |h| h.status.models = vec![model("")]),
            ),
            (
                "a 129-character model id",
                Box::new(move |h| h.status.models = vec![model(&"a".repeat(129))]),
            ),
            (
                "a newline in a model id",
                Box::new(move |h| h.status.models = vec![model("evil\nline")]),
            ),
            (
                "a quote in a model id",
                Box::new(move |h| h.status.models = vec![model("a\"b")]),
            ),
            (
                "5 endpoints",
                Box::new(|h| h.status.endpoints = vec!["http://a".into(); 5]),
            ),
            (
                "a file: endpoint",
                Box::new(|h| h.status.endpoints = vec!["file:///etc/passwd".into()]),
            ),
            (
                "a long cluster label",
                Box::new(|h| h.status.cluster = "c".repeat(129)),
            ),
            (
                "17 cold models",
                Box::new(|h| {
                    h.status.cold = (0..17).map(|i| cold(&format!("m{i}"), "ai")).collect()
                }),
            ),
            (
                "a cold model with a bad id",
                Box::new(|h| h.status.cold = vec![cold("evil\nline", "ai")]),
            ),
            (
                "a cold model of a resource with a long name",
                Box::new(|h| h.status.cold = vec![cold("m", &"n".repeat(129))]),
            ),
            (
                "negative tokens/s",
                Box::new(|h| h.status.tokens_per_second = -1.0),
            ),
            (
                "negative time to first token",
                Box::new(|h| h.status.ttft_p50_ms = -0.5),
            ),
            (
                "9 swarm addresses",
                Box::new(|h| h.swarm_addrs = vec!["/ip4/10.0.0.1/tcp/1".into(); 9]),
            ),
            (
                "a swarm address that is no multiaddr",
                Box::new(|h| h.swarm_addrs = vec!["10.0.0.1:4001".into()]),
            ),
            (
                "a 257-character swarm address",
                Box::new(|h| h.swarm_addrs = vec![format!("/dns4/{}/tcp/1", "a".repeat(245))]),
            ),
        ];
        for (what, change) in cases {
            let bytes = signed(change.as_ref());
            assert_eq!(
                verify_bytes(&bytes, Some(&me)),
                Err(RejectReason::OutOfBounds),
                "{what}"
            );
        }
        // Huge loads are in bounds: they only make the peer look busy.
        let busy = signed(&|h| {
            h.status.slots_busy = u32::MAX;
            h.status.queue_depth = u32::MAX;
        });
        let heartbeat = verify_bytes(&busy, Some(&me)).unwrap();
        assert!(heartbeat.status.load() > 1e9, "{}", heartbeat.status.load());
        // Too large before anything is parsed or checked.
        let mut huge = signed(&|_| {});
        huge.resize(MAX_ENVELOPE_BYTES + 1, b' ');
        assert_eq!(verify_bytes(&huge, Some(&me)), Err(RejectReason::TooLarge));
        assert!(valid_model_id("meta-llama/Llama-3.2-1B-Instruct:Q4_K_M"));
    }

    #[test]
    fn reject_reason_indices_match_all() {
        for (i, reason) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
    }
}
