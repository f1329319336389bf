//! The `InferenceNode` custom resource (`llamanet.io/v1alpha1`): spec and status types.
//!
//! These types are the single source of the CRD: `crdgen` prints `InferenceNode::crd()` into
//! `crds/inferencenode.yaml`, and a test fails when that file drifts from them. Everything a
//! user can get wrong is rejected by the API server through the schema built here: ranges and
//! patterns come from `schemars` attributes, cross-field rules are CEL
//! (`x-kubernetes-validations`) with messages that say what to fix.
//!
//! Defaults that the API server fills in (replicas, ports, service type) are the constants below;
//! engine settings left out are not defaulted here but by `llamanet serve` itself, so the node
//! owns its engine defaults. What the operator does with a spec lives in `children.rs`; how the
//! status is computed lives in `status.rs`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, Probe, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of LlamaNet's resources.
pub const GROUP: &str = "llamanet.io";
/// Replicas when the spec names none.
pub const DEFAULT_REPLICAS: i32 = 1;
/// Most replicas one InferenceNode may have: `status.peers` holds one entry per replica and
/// must stay bounded for the API server to estimate CEL costs and keep objects small.
pub const MAX_REPLICAS: i32 = 256;
/// Port of the API Service when the spec names none.
pub const DEFAULT_API_PORT: i32 = 8080;
/// libp2p port of the node pods when the spec names none (the port IPFS made familiar).
pub const DEFAULT_SWARM_PORT: i32 = 4001;

/// What an InferenceNode should run: replicas of `llamanet serve` with one GGUF model, joined
/// into the swarm.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "llamanet.io",
    version = "v1alpha1",
    kind = "InferenceNode",
    namespaced,
    shortname = "inode",
    category = "llamanet",
    status = "InferenceNodeStatus",
    derive = "PartialEq",
    doc = "A LlamaNet inference node: replicas of the LlamaNet server running one GGUF model, joined into the swarm.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    // Columns as JSON: the key-value form repeats `type_ = ...`, which clippy takes for a
    // duplicated attribute.
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status", "description": "Whether every replica serves and sends fresh heartbeats"}"#,
    printcolumn = r#"{"name": "Replicas", "type": "string", "jsonPath": ".status.replicasReady", "description": "Ready replicas / desired replicas"}"#,
    printcolumn = r#"{"name": "Model", "type": "string", "jsonPath": ".status.model", "description": "The model the replicas serve"}"#,
    printcolumn = r#"{"name": "Peers", "type": "integer", "jsonPath": ".status.peerCount", "description": "Replicas whose heartbeats are fresh"}"#,
    printcolumn = r#"{"name": "Tok/s", "type": "number", "jsonPath": ".status.tokensPerSecond", "description": "Generated tokens per second, summed over replicas"}"#,
    printcolumn = r#"{"name": "Last-Heartbeat", "type": "date", "jsonPath": ".status.lastHeartbeatTime"}"#,
    printcolumn = r#"{"name": "Swarm", "type": "integer", "priority": 1, "jsonPath": ".status.swarmNodes", "description": "Healthy nodes in the whole swarm serving the model, any cluster"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceNodeSpec {
    /// Where the GGUF model comes from.
    pub model: ModelSource,

    /// Number of server pods. Each one is a swarm peer with its own stable identity. With
    /// `autoscaling` set, the operator writes this field itself and a manual change is
    /// overwritten at the next decision.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = MAX_REPLICAS))]
    pub replicas: i32,

    /// Replicas from load: the operator adds replicas when the load the replicas report in
    /// their heartbeats exceeds the target, and removes them when it has stayed below for
    /// `scaleDownAfter`. Leave it out to set `replicas` yourself (or through the scale
    /// subresource, with an HPA or KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// Compute resources of each replica.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: NodeResources,

    /// llama.cpp settings; anything left out takes the server's default.
    #[serde(default, skip_serializing_if = "is_default")]
    pub engine: EngineSettings,

    /// Container image of the LlamaNet node; defaults to the operator's configured node image,
    /// or beside an external engine to its router image (the sidecar needs no llama.cpp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Swarm membership: other clusters' peers, labels, private swarm key, port.
    #[serde(default, skip_serializing_if = "is_default")]
    pub swarm: SwarmSettings,

    /// Secret key holding the API key clients must send as a bearer token; no key, no auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret: Option<SecretKeyRef>,

    /// Node labels a replica's node must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Taints the replicas tolerate (GPU nodes are often tainted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub tolerations: Option<Vec<Toleration>>,

    /// Node and pod affinity of the replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// PriorityClass of the replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,

    /// The Service in front of the replicas' OpenAI-compatible API.
    #[serde(default, skip_serializing_if = "is_default")]
    pub service: ServiceSettings,
}

/// The operator's autoscaler: bounds, one target, and how long load must stay low before a
/// replica is removed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.minReplicas <= self.maxReplicas",
        "message": "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"
    },
    {
        "rule": "has(self.targetSlotsBusy) != has(self.targetQueuePerReplica)",
        "message": "set exactly one autoscaling target: targetSlotsBusy (a fraction of the slots) or targetQueuePerReplica (waiting requests)"
    }
]))]
pub struct Autoscaling {
    /// Fewest replicas. 0 lets an idle resource scale to zero: its model stays listed in
    /// the swarm as cold, and the first request for it, at any node, wakes it.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = MAX_REPLICAS))]
    pub min_replicas: i32,
    /// Most replicas.
    #[schemars(range(min = 1, max = MAX_REPLICAS))]
    pub max_replicas: i32,
    /// Fraction of the slots (busy plus waiting requests) to aim for per replica, e.g. 0.8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.05, max = 1.0))]
    pub target_slots_busy: Option<f64>,
    /// Requests waiting for a slot to aim for per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub target_queue_per_replica: Option<u32>,
    /// How long the load must stay below the target before replicas are removed: seconds,
    /// minutes or hours (`30s`, `5m`, `1h`).
    #[serde(default = "default_scale_down_after")]
    #[schemars(regex(pattern = r"^[0-9]{1,6}(s|m|h)$"))]
    pub scale_down_after: String,
}

/// The load figure an [`Autoscaling`] aims for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AutoscalingTarget {
    SlotsBusy(f64),
    QueuePerReplica(u32),
}

impl Autoscaling {
    /// The target; `None` only for a spec the schema refuses (none or both set).
    pub fn target(&self) -> Option<AutoscalingTarget> {
        match (self.target_slots_busy, self.target_queue_per_replica) {
            (Some(fraction), None) => Some(AutoscalingTarget::SlotsBusy(fraction)),
            (None, Some(queue)) => Some(AutoscalingTarget::QueuePerReplica(queue)),
            _ => None,
        }
    }
}

fn default_min_replicas() -> i32 {
    1
}

fn default_scale_down_after() -> String {
    "5m".into()
}

/// The model file. Exactly one source: `url` (with `sha256`), `path` (a file on the node), or
/// `pvc` with `path` (a file in a PersistentVolumeClaim).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.url) ? 1 : 0) + (has(self.pvc) ? 1 : 0) + (has(self.path) && !has(self.pvc) ? 1 : 0) == 1",
        "message": "set exactly one model source: url (with sha256), path (a file on the node), or pvc with path (a file in the claim)"
    },
    {
        "rule": "!has(self.pvc) || has(self.path)",
        "message": "model.pvc needs model.path: the model file's path inside the claim"
    },
    {
        "rule": "!has(self.url) || has(self.sha256)",
        "message": "model.url needs model.sha256 (64 lowercase hex digits) so the download can be verified"
    }
]))]
pub struct ModelSource {
    /// Name the model is served under (`model` in OpenAI requests); defaults to the file name
    /// without `.gguf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    )]
    pub name: Option<String>,

    /// http(s) URL of the GGUF file; an init container downloads and verifies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s/]+/\S*[^\s/]$"))]
    pub url: Option<String>,

    /// Expected SHA-256 of the file. Required with `url`; with `path` or `pvc` it makes the
    /// init container verify (and copy) the file into the cache before the server starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub sha256: Option<String>,

    /// Absolute path of the GGUF file: on the node (mounted read-only with hostPath), or,
    /// with `pvc`, inside the claim from its root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^(/[^/\x00]+)+$"))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "!self.split('/').exists(s, s == '..' || s == '.')", "message": "model.path must not contain '.' or '..' segments"}
    ]))]
    pub path: Option<String>,

    /// PersistentVolumeClaim holding the model file named by `path`, mounted read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub pvc: Option<String>,

    /// PersistentVolumeClaim the verified model is cached in, shared by all replicas (use a
    /// ReadWriteMany claim for several replicas). Without it each pod caches in an emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub cache_pvc: Option<String>,

    /// How replicas share the verified model file with each other through the swarm. On by
    /// default for a `url` model with `sha256` in a private swarm: a new replica fetches
    /// the file from the replicas (of any cluster of the swarm) that already have it, and
    /// the URL serves only what no peer can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing: Option<WeightSharing>,
}

/// Sharing model files between replicas (`spec.model.sharing`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WeightSharing {
    /// Fetch from peers and share with them; `false`: every replica downloads from the URL
    /// and shares nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// Chunks (4 MiB) a replica uploads at once; more requests are told to come back.
    /// Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_uploads: Option<i32>,

    /// All uploads of a replica together, in MiB/s. Default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "uploadMiBPerSecond")]
    #[schemars(range(min = 1, max = 100000))]
    pub upload_mib_per_second: Option<i32>,
}

impl WeightSharing {
    pub fn is_enabled(sharing: Option<&WeightSharing>) -> bool {
        sharing.and_then(|s| s.enabled).unwrap_or(true)
    }
}

/// Compute resources of one replica.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeResources {
    /// GPUs per replica, requested as `nvidia.com/gpu`.
    #[serde(default, skip_serializing_if = "is_default")]
    #[schemars(range(min = 0, max = 16))]
    pub gpu: i32,

    /// CPU request of the server container (no CPU limit, so decoding is never throttled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,

    /// Memory request and limit of the server container (the model, KV cache and buffers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// How the replicas run inference. With `kind: builtin` (the default) these are the
/// llama.cpp settings of `llamanet serve`; unset fields take the server's defaults. With
/// `kind: external` the pod runs the engine container given in `external` and the
/// LlamaNet sidecar beside it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.kind) && self.kind == 'external') == has(self.external)",
        "message": "engine.external is the engine container of kind: external; set both or neither"
    },
    {
        "rule": "!(has(self.kind) && self.kind == 'external') || !(has(self.contextSize) || has(self.gpuLayers) || has(self.threads) || has(self.batchSize) || has(self.flashAttention))",
        "message": "contextSize, gpuLayers, threads, batchSize and flashAttention configure the built-in engine; give an external engine its settings in engine.external.args"
    }
]))]
pub struct EngineSettings {
    /// `builtin`: llama.cpp inside the LlamaNet node. `external`: an OpenAI-compatible
    /// engine (llama.cpp's llama-server, vLLM, ...) with the LlamaNet sidecar beside it.
    #[serde(default, skip_serializing_if = "is_default")]
    pub kind: EngineKind,

    /// The engine container of `kind: external`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalEngine>,

    /// Context size in tokens, shared by all parallel slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 128, max = 1048576))]
    pub context_size: Option<i32>,

    /// Sequences decoded together (continuous batching slots). For an external engine,
    /// what the sidecar reports as its slots when the engine does not say (vLLM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub parallel: Option<i32>,

    /// Model layers offloaded to the GPU; unset offloads all when the replica has a GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1024))]
    pub gpu_layers: Option<i32>,

    /// CPU threads for decoding; unset uses the physical cores the pod may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub threads: Option<i32>,

    /// Most tokens per decode call (prompt processing chunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub batch_size: Option<i32>,

    /// Use flash attention kernels (llama.cpp decides when unset). Off makes decoding on CPUs
    /// batch-invariant, so that the same request gets the same answer whatever else is
    /// decoding and streams continued on another node are exact, at a few percent of speed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flash_attention: Option<bool>,

    /// Further `llamanet serve` (or, for an external engine, `llamanet sidecar`)
    /// arguments, appended after the ones the operator sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    pub extra_args: Vec<String>,
}

/// Which engine the replicas run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    #[default]
    Builtin,
    External,
}

/// The API an external engine serves: where the sidecar reads its load.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ExternalApi {
    /// llama.cpp's `llama-server` (give it `--metrics`).
    #[default]
    LlamaServer,
    /// vLLM's OpenAI server.
    Vllm,
    /// Any other OpenAI-compatible server.
    Openai,
}

/// An engine container the user brings. The model of `spec.model` is fetched and verified
/// as for the built-in engine and mounted here too: its path is in `$(LLAMANET_MODEL_PATH)`
/// and its name in `$(LLAMANET_MODEL_ID)`, both usable in `args`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalEngine {
    /// The engine's image, e.g. `ghcr.io/ggml-org/llama.cpp:server`.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Entrypoint override; the image's own when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub command: Option<Vec<String>>,

    /// Arguments of the engine. It must serve its OpenAI API on `127.0.0.1:<port>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub args: Vec<String>,

    /// Further environment of the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub env: Option<Vec<EnvVar>>,

    /// Port of the engine's OpenAI API inside the pod.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Which API the engine serves.
    #[serde(default, skip_serializing_if = "is_default")]
    pub api: ExternalApi,

    /// Resources of the engine container; `spec.resources` (GPUs, CPU, memory) are added
    /// where these leave them out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Probes of the engine container. The sidecar's own probes already follow the
    /// engine's health, so these are optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
}

/// Swarm membership of the replicas.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwarmSettings {
    /// Multiaddrs of peers to bootstrap from besides the operator, typically nodes in other
    /// clusters, e.g. `/dns4/llamanet.example.com/tcp/4001/p2p/12D3KooW...`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 512)))]
    // A CEL rule rather than a `pattern`, so the API server's message shows an example
    // instead of a regular expression.
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": MULTIADDR_RULE,
        "message": "each bootstrap peer must be a multiaddr like /dns4/peer.example.com/tcp/4001/p2p/12D3KooW... (/ip4, /ip6, /dns, /dns4 or /dns6, then /tcp/<port> or /udp/<port>/quic-v1, then optionally /p2p/<peer id>)"
    }]))]
    pub bootstrap_peers: Vec<String>,

    /// Cluster label the replicas advertise in their heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), regex(pattern = DNS_LABEL))]
    pub cluster: Option<String>,

    /// Zone label the replicas advertise in their heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), regex(pattern = DNS_LABEL))]
    pub zone: Option<String>,

    /// Secret key holding the pre-shared key of a private swarm: only peers with the same key
    /// can connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_secret: Option<SecretKeyRef>,

    /// libp2p TCP port of the replicas.
    #[serde(default = "default_swarm_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for SwarmSettings {
    fn default() -> Self {
        Self {
            bootstrap_peers: Vec::new(),
            cluster: None,
            zone: None,
            private_key_secret: None,
            port: DEFAULT_SWARM_PORT,
        }
    }
}

/// One key of a Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// The Service in front of the replicas' API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettings {
    /// How the Service is exposed.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Port of the Service.
    #[serde(default = "default_api_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: DEFAULT_API_PORT,
        }
    }
}

/// Kubernetes Service types the API Service may have.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// What the operator observed, computed by `status::compute` and never edited by hand.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceNodeStatus {
    /// Summary of the conditions (see `status.rs` for the rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Ready, ModelLoaded, SwarmJoined and HeartbeatFresh, one entry each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Replicas wanted (mirrors spec.replicas for the scale subresource).
    #[serde(default)]
    pub replicas: i32,

    /// Replicas whose server answers /health.
    #[serde(default)]
    pub ready_replicas: i32,

    /// `ready/desired`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_ready: Option<String>,

    /// The model the replicas serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,

    /// Base URL of the OpenAI-compatible API inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// Replicas whose heartbeat is fresh.
    #[serde(default)]
    pub peer_count: i32,

    /// One entry per replica that has sent a heartbeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_REPLICAS))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["pod"]))]
    pub peers: Vec<PeerStatus>,

    /// When the newest heartbeat of any replica arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,

    /// Generated tokens per second, summed over the replicas with fresh heartbeats.
    #[serde(default)]
    pub tokens_per_second: f64,

    /// Healthy nodes in the whole swarm that serve this model, in any cluster or namespace
    /// (these replicas, other InferenceNodes, sidecars, nodes outside Kubernetes), as the
    /// operator's swarm peer sees them: what a request for the model can be routed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm_nodes: Option<i32>,

    /// The metadata.generation this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Label selector of the replicas' pods (for the scale subresource and HPAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// One-word summary of an InferenceNode's state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Nothing runs yet (pods not created or not scheduled).
    Pending,
    /// Replicas are fetching or loading the model, or joining the swarm.
    Loading,
    /// Every replica serves and sends fresh heartbeats.
    Ready,
    /// Something that worked stopped working (a lost heartbeat, a crashing replica).
    Degraded,
    /// It cannot work without a change of the spec (a wrong checksum).
    Failed,
    /// No replica runs (`replicas: 0`); with `autoscaling.minReplicas: 0`, a request for
    /// the model wakes it.
    ScaledToZero,
}

/// A condition of an InferenceNode, shaped like `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: ConditionType,
    pub status: ConditionStatus,
    /// CamelCase reason of the last transition.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// What happened, for humans.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub message: String,
    /// When the status last changed (reason or message changes keep it).
    pub last_transition_time: Time,
    /// The metadata.generation the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The conditions an InferenceNode has.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum ConditionType {
    /// Every replica serves and its heartbeat is fresh.
    Ready,
    /// Every replica has the verified model loaded.
    ModelLoaded,
    /// Every serving replica has been heard from in the swarm.
    SwarmJoined,
    /// No replica has missed three heartbeat intervals.
    HeartbeatFresh,
    /// The autoscaler is changing the replicas (only with `spec.autoscaling`).
    Scaling,
}

/// Status of a condition.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// What the newest heartbeat of one replica said.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// Pod of the replica.
    pub pod: String,
    /// libp2p peer id of the replica.
    pub peer_id: String,
    /// When its newest heartbeat arrived.
    pub last_heartbeat_time: Time,
    /// Generated tokens per second it reported.
    #[serde(default)]
    pub tokens_per_second: f64,
    /// Slots decoding a request.
    #[serde(default)]
    pub slots_busy: i32,
    /// Slots it has.
    #[serde(default)]
    pub slots_total: i32,
}

/// RFC 1123 subdomain, the shape of most object names.
const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// RFC 1123 label.
const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Every item is a dialable libp2p multiaddr: host, TCP (or QUIC) port, optionally the peer id.
const MULTIADDR_RULE: &str = "self.all(a, a.matches('^/(ip4|ip6|dns|dns4|dns6)/[^/ ]+/(tcp/[0-9]{1,5}|udp/[0-9]{1,5}/quic-v1)(/p2p/[1-9A-HJ-NP-Za-km-z]{32,128})?$'))";

fn default_replicas() -> i32 {
    DEFAULT_REPLICAS
}

fn default_api_port() -> i32 {
    DEFAULT_API_PORT
}

fn default_swarm_port() -> i32 {
    DEFAULT_SWARM_PORT
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// The CRD as `crds/inferencenode.yaml` holds it: a do-not-edit header, then the YAML.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let yaml = serde_yaml_ng::to_string(&InferenceNode::crd())
        .expect("a CustomResourceDefinition always serializes to YAML");
    format!(
        "# Generated from operator/src/crd.rs by `cargo run -p llamanet-operator --bin crdgen`; \
         do not edit.\n{yaml}"
    )
}

/// Builder-style fixtures: `InferenceNode::test()` is a valid resource as the API server
/// returns it (name, namespace, uid, generation set), and the `with_*` methods change one
/// thing each.
#[cfg(test)]
impl InferenceNode {
    pub(crate) fn test() -> Self {
        let mut node = InferenceNode::new(
            "gemma",
            InferenceNodeSpec {
                model: ModelSource {
                    url: Some("https://models.example.com/gemma-3-270m-q4_k_m.gguf".into()),
                    sha256: Some("ab".repeat(32)),
                    ..ModelSource::default()
                },
                replicas: DEFAULT_REPLICAS,
                autoscaling: None,
                resources: NodeResources::default(),
                engine: EngineSettings::default(),
                image: None,
                swarm: SwarmSettings::default(),
                api_key_secret: None,
                node_selector: None,
                tolerations: None,
                affinity: None,
                priority_class_name: None,
                service: ServiceSettings::default(),
            },
        );
        node.metadata.namespace = Some("ai".into());
        node.metadata.uid = Some("6c2d6a8e-2a43-4d0b-9b7e-1f0c6f3f6a11".into());
        node.metadata.generation = Some(1);
        node
    }

    pub(crate) fn with_replicas(mut self, replicas: i32) -> Self {
        self.spec.replicas = replicas;
        self
    }

    pub(crate) fn with_model(mut self, model: ModelSource) -> Self {
        self.spec.model = model;
        self
    }

    pub(crate) fn with_gpus(mut self, gpus: i32) -> Self {
        self.spec.resources.gpu = gpus;
        self
    }

    pub(crate) fn with_engine(mut self, engine: EngineSettings) -> Self {
        self.spec.engine = engine;
        self
    }

    pub(crate) fn with_swarm(mut self, swarm: SwarmSettings) -> Self {
        self.spec.swarm = swarm;
        self
    }

    pub(crate) fn with_api_key(mut self, name: &str, key: &str) -> Self {
        self.spec.api_key_secret = Some(SecretKeyRef {
            name: name.into(),
            key: key.into(),
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::json;

    use super::*;

    #[test]
    fn crd_names_and_subresources() {
        let crd = InferenceNode::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("inferencenodes.llamanet.io")
        );
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["inode".to_owned()]));
        assert_eq!(crd.spec.names.categories, Some(vec!["llamanet".to_owned()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let sub = version.subresources.as_ref().unwrap();
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Ready",
                "Replicas",
                "Model",
                "Peers",
                "Tok/s",
                "Last-Heartbeat",
                "Swarm",
                "Age"
            ]
        );
        // The swarm-wide count shows with `-o wide` only: the default table stays narrow.
        let swarm = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.name == "Swarm")
            .unwrap();
        assert_eq!(swarm.priority, Some(1));
        assert_eq!(swarm.json_path, ".status.swarmNodes");
    }

    #[test]
    fn schema_carries_the_validation_rules() {
        let schema = serde_json::to_value(InferenceNode::crd()).unwrap();
        let spec = &schema["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"];
        assert_eq!(spec["replicas"]["minimum"], json!(0.0));
        assert_eq!(spec["replicas"]["default"], json!(1));
        assert_eq!(
            spec["resources"]["properties"]["gpu"]["minimum"],
            json!(0.0)
        );
        assert_eq!(
            spec["model"]["properties"]["sha256"]["pattern"],
            json!("^[a-f0-9]{64}$")
        );
        let rules = spec["model"]["x-kubernetes-validations"]
            .as_array()
            .unwrap();
        assert!(rules.iter().any(|r| {
            r["message"]
                .as_str()
                .unwrap()
                .starts_with("set exactly one model source")
        }));
        assert_eq!(
            spec["service"]["properties"]["port"]["maximum"],
            json!(65535.0)
        );
        assert_eq!(
            spec["engine"]["properties"]["parallel"]["minimum"],
            json!(1.0)
        );
        let status = &schema["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"];
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], json!("map"));
        assert_eq!(
            status["conditions"]["x-kubernetes-list-map-keys"],
            json!(["type"])
        );
        assert_eq!(status["peers"]["maxItems"], json!(MAX_REPLICAS));
    }

    #[test]
    fn a_minimal_spec_takes_the_defaults() {
        let spec: InferenceNodeSpec =
            serde_json::from_value(json!({"model": {"path": "/models/m.gguf"}})).unwrap();
        assert_eq!(spec.replicas, DEFAULT_REPLICAS);
        assert_eq!(spec.service.port, DEFAULT_API_PORT);
        assert_eq!(spec.service.type_, ServiceType::ClusterIP);
        assert_eq!(spec.swarm.port, DEFAULT_SWARM_PORT);
        assert_eq!(spec.resources.gpu, 0);
        // Unset settings stay unset when written back (server-side apply must not claim them).
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            json!({"model": {"path": "/models/m.gguf"}, "replicas": 1})
        );
    }
}
