//! The objects an InferenceNode owns, built by one pure function ([`desired`]) from the
//! resource and the operator's configuration. Applying them (server-side apply) is the
//! controller's job; here only their shape is decided, so it is unit-tested without a cluster.
//!
//! Per resource `<name>` in namespace `<ns>`:
//! - StatefulSet `<name>`: the replicas, pods `<name>-0`, `<name>-1`, ...;
//! - Service `<name>`: the OpenAI-compatible API (`spec.service`), i.e.
//!   `http://<name>.<ns>.svc:<port>/v1`;
//! - Service `<name>-swarm`: headless, the libp2p port of every replica (also the
//!   StatefulSet's governing Service);
//! - Secret `<name>-identity` (created by the controller, only mounted here): one libp2p key per
//!   pod name, so each replica keeps its peer id across restarts and rescheduling;
//! - Secret `<name>-swarm-key`: a copy of the operator's own swarm pre-shared key, when the
//!   operator runs a private swarm (the chart's default) and the resource names no key of its
//!   own. Pods can only mount Secrets of their namespace, hence the copy.
//!
//! # Why a StatefulSet
//! A replica's swarm identity must survive its pod being replaced: other peers, DHT records
//! and the operator's status all know it by peer id. A StatefulSet gives each replica a stable
//! pod name (`<name>-<ordinal>`), and that name selects its key in the identity Secret
//! (`--identity-key /var/run/llamanet/identity/$(POD_NAME)`). A Deployment's random pod names
//! would make every restart a new peer. Pods start in parallel (`podManagementPolicy:
//! Parallel`): replicas do not depend on each other's order.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, HostPathVolumeSource, Lifecycle, LifecycleHandler,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, SleepAction, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::config::OperatorConfig;
use crate::crd::{ExternalApi, ExternalEngine, InferenceNode, ModelSource, SecretKeyRef};
use crate::error::{Error, Result};

/// Name of the server container (running `llamanet serve`).
pub const SERVER_CONTAINER: &str = "llamanet";
/// Name of the init container that fetches and verifies the model.
pub const FETCH_CONTAINER: &str = "fetch-model";
/// Name of the engine container of `engine.kind: external`.
pub const ENGINE_CONTAINER: &str = "engine";
/// The binary in the node image; the local test cluster also maps images to it by this name.
pub const NODE_COMMAND: &str = "llamanet";
/// Port the server's API (and /metrics, /health) listens on in the pod.
pub const API_CONTAINER_PORT: i32 = 8080;
/// User and group the node runs as (the `nonroot` user of distroless images).
pub const NODE_UID: i64 = 65532;
/// Field manager of server-side apply and value of `app.kubernetes.io/managed-by`.
pub const MANAGER: &str = "llamanet-operator";

/// Where the verified model (the cache volume) is mounted.
const MODELS_DIR: &str = "/models";
/// Where a `path` or `pvc` model source is mounted, read-only.
const MODEL_SOURCE_DIR: &str = "/model-source";
const IDENTITY_DIR: &str = "/var/run/llamanet/identity";
/// Writable scratch space (the root filesystem is read-only), handed over as `TMPDIR`. Not
/// `/tmp`: the local test cluster runs pods as host processes, and a volume over `/tmp` would
/// hide the cluster's own folders there (the images' binaries among them).
const SCRATCH_DIR: &str = "/var/run/llamanet/tmp";
const SWARM_KEY_DIR: &str = "/var/run/llamanet/swarm-key";
const API_KEY_ENV: &str = "LLAMANET_API_KEY";
/// Seconds a stopping pod keeps serving before SIGTERM, so Services and peers stop sending it
/// requests first (endpoint removal and the preStop hook start together).
const DRAIN_SECONDS: i64 = 5;
/// Time for in-flight generations to finish after SIGTERM.
const TERMINATION_GRACE_SECONDS: i64 = 60;

/// The objects one InferenceNode owns.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub stateful_set: StatefulSet,
    pub api_service: Service,
    pub swarm_service: Service,
    /// The copy of the operator's swarm key, when the replicas use it.
    pub swarm_key: Option<Secret>,
}

/// The key in `<name>-swarm-key` that holds the pre-shared key.
const SWARM_KEY_ENTRY: &str = "psk";

/// The Secret holding the copy of the operator's swarm key.
pub fn swarm_key_secret_name(name: &str) -> String {
    format!("{name}-swarm-key")
}

/// The pre-shared key the replicas of `node` use: the one the resource names, else the
/// operator's own (as `<name>-swarm-key`), else none (a public swarm).
pub fn swarm_key_ref(
    node: &InferenceNode,
    name: &str,
    config: &OperatorConfig,
) -> Option<SecretKeyRef> {
    node.spec.swarm.private_key_secret.clone().or_else(|| {
        config.swarm_key.as_ref().map(|_| SecretKeyRef {
            name: swarm_key_secret_name(name),
            key: SWARM_KEY_ENTRY.into(),
        })
    })
}

/// Name, namespace and controller owner reference of `node`, which every child carries.
/// Fails only for a resource lacking what every object from the API server has.
pub fn identity(node: &InferenceNode) -> Result<(String, String, OwnerReference)> {
    let name = node
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingObjectKey(".metadata.name"))?;
    let namespace = node
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    let owner = node
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey(".metadata.uid"))?;
    Ok((name, namespace, owner))
}

/// Builds the children of `node`. Fails only when the resource lacks the name, namespace or
/// uid that every object from the API server has.
pub fn desired(node: &InferenceNode, config: &OperatorConfig) -> Result<Children> {
    let (name, namespace, owner) = identity(node)?;
    let meta = |object_name: String, component: &str| ObjectMeta {
        name: Some(object_name),
        namespace: Some(namespace.clone()),
        labels: Some(labels(&name, component)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    };
    let spec = &node.spec;

    let api_service = Service {
        metadata: meta(api_service_name(&name), "api"),
        spec: Some(ServiceSpec {
            type_: Some(spec.service.type_.as_str().to_owned()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: spec.service.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let swarm_service = Service {
        metadata: meta(swarm_service_name(&name), "swarm"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Peers that are still loading the model are already swarm members.
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some("swarm".into()),
                port: spec.swarm.port,
                target_port: Some(IntOrString::String("swarm".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let stateful_set = StatefulSet {
        metadata: meta(name.clone(), "inference-node"),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(swarm_service_name(&name)),
            pod_management_policy: Some("Parallel".into()),
            revision_history_limit: Some(5),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            },
            template: pod_template(node, &name, &namespace, config),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };

    let swarm_key = match (&spec.swarm.private_key_secret, &config.swarm_key) {
        (None, Some(key)) => Some(Secret {
            metadata: meta(swarm_key_secret_name(&name), "swarm-key"),
            string_data: Some(BTreeMap::from([(SWARM_KEY_ENTRY.to_owned(), key.clone())])),
            ..Secret::default()
        }),
        _ => None,
    };

    Ok(Children {
        stateful_set,
        api_service,
        swarm_service,
        swarm_key,
    })
}

fn pod_template(
    node: &InferenceNode,
    name: &str,
    namespace: &str,
    config: &OperatorConfig,
) -> PodTemplateSpec {
    let spec = &node.spec;
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| match spec.engine.external {
            None => config.default_image.clone(),
            Some(_) => config.router_image.clone(),
        });
    let model = ModelPlan::new(&spec.model);

    let mut volumes = vec![
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        Volume {
            name: "identity".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(identity_secret_name(name)),
                default_mode: Some(0o400),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    volumes.extend(model.volumes.iter().cloned());
    let mut server_mounts = vec![
        mount("tmp", SCRATCH_DIR, false),
        mount("identity", IDENTITY_DIR, true),
    ];
    server_mounts.extend(model.mounts.iter().cloned());

    if let Some(psk) = swarm_key_ref(node, name, config) {
        volumes.push(Volume {
            name: "swarm-key".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(psk.name.clone()),
                default_mode: Some(0o400),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        server_mounts.push(mount("swarm-key", SWARM_KEY_DIR, true));
    }

    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        // The server binds to its pod IP, which works in real clusters and with the local test
        // cluster, where pods are processes sharing one network namespace.
        field_env("POD_IP", "status.podIP"),
        plain_env("LLAMANET_LOG_FORMAT", "json"),
        plain_env("TMPDIR", SCRATCH_DIR),
    ];
    if let Some(key) = &spec.api_key_secret {
        env.push(EnvVar {
            name: API_KEY_ENV.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: key.name.clone(),
                    key: key.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }

    let server = Container {
        name: SERVER_CONTAINER.into(),
        image: Some(image.clone()),
        command: Some(vec![NODE_COMMAND.into()]),
        args: Some(node_args(node, name, namespace, &model, config)),
        env: Some(env),
        ports: Some(vec![
            container_port("http", API_CONTAINER_PORT),
            container_port("swarm", spec.swarm.port),
        ]),
        // An external engine gets the replica's resources; the sidecar needs little.
        resources: Some(match &spec.engine.external {
            None => server_resources(node),
            Some(_) => ResourceRequirements::default(),
        }),
        startup_probe: Some(health_probe(5, 360)),
        readiness_probe: Some(health_probe(5, 2)),
        liveness_probe: Some(health_probe(10, 3)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: DRAIN_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(container_security()),
        // A crash leaves its last log lines where `kubectl describe` and the status can see
        // them.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(server_mounts),
        ..Container::default()
    };

    let shares = shares_weights(node, name, config, &model);
    let init_containers = model.fetch.as_ref().map(|fetch| {
        let mut mounts = vec![mount("tmp", SCRATCH_DIR, false)];
        mounts.extend(model.mounts.iter().cloned());
        let mut args = vec![
            "fetch".into(),
            "--source".into(),
            fetch.source.clone(),
            "--dest".into(),
            model.serve_path.clone(),
            "--sha256".into(),
            fetch.sha256.clone(),
        ];
        if let (true, Some(psk)) = (shares, swarm_key_ref(node, name, config)) {
            // Peers first: the replicas that already have the file, in any cluster.
            for peer in bootstrap_peers(node, config) {
                args.extend(["--bootstrap".into(), peer.clone()]);
            }
            args.extend(["--swarm-key".into(), format!("{SWARM_KEY_DIR}/{}", psk.key)]);
            // Replicas that start together take one copy from the source, the first
            // replica's, and the rest from it.
            args.extend([
                "--pod".into(),
                "$(POD_NAME)".into(),
                "--wait-for-peers".into(),
                WAIT_FOR_PEERS_SECONDS.to_string(),
            ]);
            mounts.push(mount("swarm-key", SWARM_KEY_DIR, true));
        }
        vec![Container {
            name: FETCH_CONTAINER.into(),
            image: Some(image.clone()),
            command: Some(vec![NODE_COMMAND.into()]),
            args: Some(args),
            env: Some(vec![
                field_env("POD_NAME", "metadata.name"),
                plain_env("LLAMANET_LOG_FORMAT", "json"),
                plain_env("TMPDIR", SCRATCH_DIR),
            ]),
            security_context: Some(container_security()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            volume_mounts: Some(mounts),
            ..Container::default()
        }]
    });

    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    if spec.resources.gpu > 0 {
        // GPU nodes are commonly tainted with their resource name; pods that request a GPU
        // tolerate it (what the ExtendedResourceToleration admission plugin would add).
        tolerations.push(Toleration {
            key: Some(GPU_RESOURCE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        });
    }

    let mut pod_labels = labels(name, "inference-node");
    // Which metric names an inference extension endpoint picker reads on this pod (its
    // engine configurations are keyed by this label): LlamaNet's own, also for a sidecar in
    // front of an external engine, which republishes the engine's figures under them.
    pod_labels.insert(ENGINE_TYPE_LABEL.into(), ENGINE_TYPE.into());
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            init_containers,
            containers: std::iter::once(server)
                .chain(
                    spec.engine
                        .external
                        .as_ref()
                        .map(|external| engine_container(node, external, &model)),
                )
                .collect(),
            volumes: Some(volumes),
            // The node never talks to the Kubernetes API.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(NODE_UID),
                run_as_group: Some(NODE_UID),
                // Makes the cache volume writable for the non-root user.
                fs_group: Some(NODE_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            node_selector: spec.node_selector.clone(),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            affinity: spec.affinity.clone(),
            priority_class_name: spec.priority_class_name.clone(),
            ..PodSpec::default()
        }),
    }
}

/// The node container's arguments: `llamanet serve` with the model and the engine
/// settings that are set, or for an external engine `llamanet sidecar` pointed at it; then
/// where to listen and the swarm; `extraArgs` last so they can override.
fn node_args(
    node: &InferenceNode,
    name: &str,
    namespace: &str,
    model: &ModelPlan,
    config: &OperatorConfig,
) -> Vec<String> {
    let spec = &node.spec;
    let engine = &spec.engine;
    let mut args: Vec<String> = match &engine.external {
        None => vec!["serve".into(), "--model".into(), model.serve_path.clone()],
        Some(external) => vec![
            "sidecar".into(),
            "--upstream".into(),
            format!("http://127.0.0.1:{}", external.port),
            "--engine".into(),
            match external.api {
                ExternalApi::LlamaServer => "llama-server",
                ExternalApi::Vllm => "vllm",
                ExternalApi::Openai => "openai",
            }
            .into(),
        ],
    };
    args.extend([
        "--model-id".into(),
        model_name(&spec.model),
        "--host".into(),
        "$(POD_IP)".into(),
        "--port".into(),
        API_CONTAINER_PORT.to_string(),
        "--swarm-port".into(),
        spec.swarm.port.to_string(),
        "--identity".into(),
        format!("{IDENTITY_DIR}/$(POD_NAME)"),
        // Heartbeats carry these, so the operator maps them to this resource and pod.
        "--inference-node".into(),
        format!("{namespace}/{name}"),
        "--pod".into(),
        "$(POD_NAME)".into(),
        // The operator judges staleness in multiples of this interval.
        "--heartbeat-interval".into(),
        config.heartbeat_interval.as_secs_f64().to_string(),
    ]);
    let mut flag = |name: &str, value: Option<i32>| {
        if let Some(v) = value {
            args.push(name.into());
            args.push(v.to_string());
        }
    };
    if engine.external.is_some() {
        flag("--slots", engine.parallel);
    } else {
        flag("--ctx-size", engine.context_size);
        flag("--parallel", engine.parallel);
        flag("--gpu-layers", engine.gpu_layers);
        flag("--threads", engine.threads);
        flag("--batch-size", engine.batch_size);
        if let Some(on) = engine.flash_attention {
            args.push("--flash-attention".into());
            args.push(if on { "on" } else { "off" }.into());
        }
    }
    for peer in bootstrap_peers(node, config) {
        args.push("--bootstrap".into());
        args.push(peer.clone());
    }
    if engine.external.is_none()
        && let Some(fetch) = &model.fetch
    {
        // The server checks the file once more as it loads it, and only then shares it.
        args.extend(["--sha256".into(), fetch.sha256.clone()]);
        let sharing = spec.model.sharing.as_ref();
        let uploads = match shares_weights(node, name, config, model) {
            false => 0,
            true => sharing.and_then(|s| s.max_uploads).unwrap_or(4),
        };
        args.extend(["--weights-uploads".into(), uploads.to_string()]);
        if let Some(rate) = sharing.and_then(|s| s.upload_mib_per_second) {
            args.extend(["--weights-upload-rate".into(), rate.to_string()]);
        }
    }
    if let Some(cluster) = &spec.swarm.cluster {
        args.extend(["--cluster".into(), cluster.clone()]);
    }
    if let Some(zone) = &spec.swarm.zone {
        args.extend(["--zone".into(), zone.clone()]);
    }
    if let Some(psk) = swarm_key_ref(node, name, config) {
        args.extend(["--swarm-key".into(), format!("{SWARM_KEY_DIR}/{}", psk.key)]);
    }
    args.extend(engine.extra_args.iter().cloned());
    args
}

/// How long a replica other than the first waits for a peer to share the model before it
/// downloads from the URL itself: the first replica's download and verification of a
/// large model from a slow origin.
const WAIT_FOR_PEERS_SECONDS: u32 = 900;

/// Peers a replica joins the swarm through: the operator's, then the resource's own.
fn bootstrap_peers<'a>(
    node: &'a InferenceNode,
    config: &'a OperatorConfig,
) -> impl Iterator<Item = &'a String> {
    config
        .bootstrap_peers
        .iter()
        .chain(&node.spec.swarm.bootstrap_peers)
}

/// Whether replicas fetch the model from each other and share it: for a downloaded model
/// (a local copy is faster than any peer) served by the built-in engine (which verifies
/// and shares it), in a private swarm, unless `model.sharing.enabled` is false.
fn shares_weights(
    node: &InferenceNode,
    name: &str,
    config: &OperatorConfig,
    model: &ModelPlan,
) -> bool {
    crate::crd::WeightSharing::is_enabled(node.spec.model.sharing.as_ref())
        && node.spec.model.url.is_some()
        && model.fetch.is_some()
        && node.spec.engine.external.is_none()
        && swarm_key_ref(node, name, config).is_some()
}

/// The engine container of `engine.kind: external`: the user's container with the model
/// mounted, `LLAMANET_MODEL_PATH`/`LLAMANET_MODEL_ID` to refer to it, the replica's GPUs,
/// and the same locked-down security context as the node.
fn engine_container(
    node: &InferenceNode,
    external: &ExternalEngine,
    model: &ModelPlan,
) -> Container {
    let mut env = vec![
        plain_env("LLAMANET_MODEL_PATH", &model.serve_path),
        plain_env("LLAMANET_MODEL_ID", &model_name(&node.spec.model)),
        // Engines that write caches (vLLM, Hugging Face) find a writable home.
        plain_env("HOME", SCRATCH_DIR),
        plain_env("TMPDIR", SCRATCH_DIR),
    ];
    env.extend(external.env.iter().flatten().cloned());
    let mut resources = external.resources.clone().unwrap_or_default();
    let defaults = server_resources(node);
    for (mine, spec_side) in [
        (&mut resources.requests, defaults.requests),
        (&mut resources.limits, defaults.limits),
    ] {
        for (name, quantity) in spec_side.into_iter().flatten() {
            mine.get_or_insert_with(BTreeMap::new)
                .entry(name)
                .or_insert(quantity);
        }
    }
    let mut mounts = vec![mount("tmp", SCRATCH_DIR, false)];
    mounts.extend(model.mounts.iter().cloned());
    Container {
        name: ENGINE_CONTAINER.into(),
        image: Some(external.image.clone()),
        command: external.command.clone(),
        args: (!external.args.is_empty()).then(|| external.args.clone()),
        env: Some(env),
        ports: Some(vec![container_port("engine", external.port)]),
        resources: Some(resources),
        startup_probe: external.startup_probe.clone(),
        readiness_probe: external.readiness_probe.clone(),
        liveness_probe: external.liveness_probe.clone(),
        security_context: Some(container_security()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

const GPU_RESOURCE: &str = "nvidia.com/gpu";

fn server_resources(node: &InferenceNode) -> ResourceRequirements {
    let r = &node.spec.resources;
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if r.gpu > 0 {
        let gpus = Quantity(r.gpu.to_string());
        requests.insert(GPU_RESOURCE.to_owned(), gpus.clone());
        limits.insert(GPU_RESOURCE.to_owned(), gpus);
    }
    if let Some(cpu) = &r.cpu {
        requests.insert("cpu".to_owned(), cpu.clone());
    }
    if let Some(memory) = &r.memory {
        requests.insert("memory".to_owned(), memory.clone());
        limits.insert("memory".to_owned(), memory.clone());
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..ResourceRequirements::default()
    }
}

/// Where the server finds the model, and how it gets there.
#[derive(Clone, Debug, PartialEq)]
struct ModelPlan {
    /// What the fetch init container verifies and copies, if anything.
    fetch: Option<Fetch>,
    /// The file `llamanet serve --model` loads.
    serve_path: String,
    volumes: Vec<Volume>,
    /// Mounts of the model volumes, shared by the init and server containers.
    mounts: Vec<VolumeMount>,
}

#[derive(Clone, Debug, PartialEq)]
struct Fetch {
    source: String,
    sha256: String,
}

impl ModelPlan {
    fn new(model: &ModelSource) -> Self {
        let file = model_file_name(model);
        let mut volumes = Vec::new();
        let mut mounts = Vec::new();

        // The source as the pod sees it: a URL, or a file on a read-only mount.
        let source = if let Some(url) = &model.url {
            url.clone()
        } else if let Some(claim) = &model.pvc {
            volumes.push(Volume {
                name: "model-source".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: Some(true),
                }),
                ..Volume::default()
            });
            mounts.push(mount("model-source", MODEL_SOURCE_DIR, true));
            let inside = model.path.as_deref().unwrap_or_default();
            format!("{MODEL_SOURCE_DIR}/{}", inside.trim_start_matches('/'))
        } else {
            let host_path = model.path.clone().unwrap_or_default();
            volumes.push(Volume {
                name: "model-source".into(),
                host_path: Some(HostPathVolumeSource {
                    path: host_path,
                    type_: Some("File".into()),
                }),
                ..Volume::default()
            });
            let at = format!("{MODEL_SOURCE_DIR}/{file}");
            mounts.push(mount("model-source", &at, true));
            at
        };

        let Some(sha256) = model.sha256.clone() else {
            // Nothing to verify: serve the mounted file where it is.
            return Self {
                fetch: None,
                serve_path: source,
                volumes,
                mounts,
            };
        };

        volumes.push(match &model.cache_pvc {
            Some(claim) => Volume {
                name: "models".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: Some(false),
                }),
                ..Volume::default()
            },
            None => Volume {
                name: "models".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        });
        mounts.push(mount("models", MODELS_DIR, false));
        Self {
            fetch: Some(Fetch { source, sha256 }),
            serve_path: format!("{MODELS_DIR}/{file}"),
            volumes,
            mounts,
        }
    }
}

/// The model's file name: the last segment of its URL (without query) or path.
fn model_file_name(model: &ModelSource) -> String {
    let raw = model
        .url
        .as_deref()
        .map(|u| u.split(['?', '#']).next().unwrap_or(u))
        .or(model.path.as_deref())
        .unwrap_or_default();
    match raw.rsplit('/').next() {
        Some(last) if !last.is_empty() => last.to_owned(),
        _ => "model.gguf".to_owned(),
    }
}

/// The name the model is served under: `spec.model.name`, else the file name without `.gguf`.
pub fn model_name(model: &ModelSource) -> String {
    if let Some(name) = &model.name {
        return name.clone();
    }
    let file = model_file_name(model);
    file.strip_suffix(".gguf").unwrap_or(&file).to_owned()
}

/// Name of the pod of one replica (the StatefulSet's naming).
pub fn pod_name(name: &str, ordinal: i32) -> String {
    format!("{name}-{ordinal}")
}

/// The Secret holding one libp2p identity key per pod name.
pub fn identity_secret_name(name: &str) -> String {
    format!("{name}-identity")
}

pub fn api_service_name(name: &str) -> String {
    name.to_owned()
}

pub fn swarm_service_name(name: &str) -> String {
    format!("{name}-swarm")
}

/// Base URL of the OpenAI-compatible API inside the cluster.
pub fn endpoint(node: &InferenceNode) -> String {
    format!(
        "http://{}.{}.svc:{}/v1",
        api_service_name(&node.name_any()),
        node.namespace().unwrap_or_default(),
        node.spec.service.port
    )
}

/// The Gateway API inference extension's pod label naming the model server's kind.
pub const ENGINE_TYPE_LABEL: &str = "inference.networking.k8s.io/engine-type";
/// This project's value of [`ENGINE_TYPE_LABEL`].
pub const ENGINE_TYPE: &str = "llamanet";

/// Labels that select the pods of one resource (they never change, as a StatefulSet's
/// selector is immutable).
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "llamanet-node".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
    ])
}

/// `selector_labels` as a label selector string, for `status.selector`.
pub fn selector_string(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels of every object the operator makes for a resource: the selector labels, who manages
/// it, and which part of the resource it is.
pub fn labels(name: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    labels.insert("app.kubernetes.io/component".into(), component.into());
    labels
}

fn health_probe(period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/health".into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(3),
        ..Probe::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NODE_UID),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;

    use super::*;
    use crate::crd::{EngineSettings, SecretKeyRef, SwarmSettings};

    fn build(node: &InferenceNode) -> Children {
        desired(node, &OperatorConfig::default()).unwrap()
    }

    fn pod_spec(children: &Children) -> &PodSpec {
        children
            .stateful_set
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
    }

    fn server(children: &Children) -> &Container {
        pod_spec(children)
            .containers
            .iter()
            .find(|c| c.name == SERVER_CONTAINER)
            .unwrap()
    }

    fn args(children: &Children) -> Vec<String> {
        server(children).args.clone().unwrap()
    }

    /// The value following `flag` in `args`.
    fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).map(String::as_str)
    }

    fn volume<'a>(spec: &'a PodSpec, name: &str) -> &'a Volume {
        spec.volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    fn model(json: serde_json::Value) -> ModelSource {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn stateful_set_runs_the_replicas_with_stable_names() {
        let children = build(&InferenceNode::test().with_replicas(3));
        let sts = &children.stateful_set;
        assert_eq!(sts.metadata.name.as_deref(), Some("gemma"));
        assert_eq!(sts.metadata.namespace.as_deref(), Some("ai"));
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("gemma-swarm"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(spec.selector.match_labels, Some(selector_labels("gemma")));
        let template_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        for (k, v) in selector_labels("gemma") {
            assert_eq!(
                template_labels.get(&k),
                Some(&v),
                "template must match the selector"
            );
        }
        assert_eq!(
            template_labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some(MANAGER)
        );
        assert_eq!(
            template_labels
                .get("app.kubernetes.io/component")
                .map(String::as_str),
            Some("inference-node")
        );
        assert_eq!(
            template_labels.get(ENGINE_TYPE_LABEL).map(String::as_str),
            Some("llamanet"),
            "an endpoint picker reads LlamaNet's metric names on pods with this label"
        );
        assert_eq!(pod_name("gemma", 2), "gemma-2");
    }

    #[test]
    fn every_child_is_owned_by_the_resource() {
        let children = build(&InferenceNode::test());
        for meta in [
            &children.stateful_set.metadata,
            &children.api_service.metadata,
            &children.swarm_service.metadata,
        ] {
            let owners = meta.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "InferenceNode");
            assert_eq!(owners[0].api_version, "llamanet.io/v1alpha1");
            assert_eq!(owners[0].name, "gemma");
            assert_eq!(owners[0].uid, "6c2d6a8e-2a43-4d0b-9b7e-1f0c6f3f6a11");
            assert_eq!(owners[0].controller, Some(true));
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/instance"], "gemma");
            assert_eq!(labels["app.kubernetes.io/name"], "llamanet-node");
        }
    }

    #[test]
    fn a_resource_without_uid_is_an_error() {
        let mut node = InferenceNode::test();
        node.metadata.uid = None;
        let err = desired(&node, &OperatorConfig::default()).unwrap_err();
        assert!(
            matches!(err, Error::MissingObjectKey(".metadata.uid")),
            "{err}"
        );
    }

    #[test]
    fn server_runs_llamanet_serve_bound_to_the_pod_ip() {
        let children = build(&InferenceNode::test());
        let c = server(&children);
        assert_eq!(c.image.as_deref(), Some(crate::config::DEFAULT_NODE_IMAGE));
        assert_eq!(c.command, Some(vec!["llamanet".to_owned()]));
        let args = args(&children);
        assert_eq!(args[0], "serve");
        assert_eq!(flag(&args, "--host"), Some("$(POD_IP)"));
        assert_eq!(flag(&args, "--port"), Some("8080"));
        assert_eq!(flag(&args, "--swarm-port"), Some("4001"));
        assert_eq!(
            flag(&args, "--model"),
            Some("/models/gemma-3-270m-q4_k_m.gguf")
        );
        assert_eq!(flag(&args, "--model-id"), Some("gemma-3-270m-q4_k_m"));
        assert_eq!(
            flag(&args, "--identity"),
            Some("/var/run/llamanet/identity/$(POD_NAME)")
        );
        assert_eq!(flag(&args, "--inference-node"), Some("ai/gemma"));
        assert_eq!(flag(&args, "--pod"), Some("$(POD_NAME)"));
        // Engine settings that are not set are left to the server's defaults.
        for absent in [
            "--ctx-size",
            "--parallel",
            "--gpu-layers",
            "--threads",
            "--batch-size",
        ] {
            assert!(!args.iter().any(|a| a == absent), "{absent} in {args:?}");
        }

        let env = c.env.as_ref().unwrap();
        let pod_ip = env.iter().find(|e| e.name == "POD_IP").unwrap();
        let field = pod_ip
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap();
        assert_eq!(field.field_path, "status.podIP");
        let pod_name = env.iter().find(|e| e.name == "POD_NAME").unwrap();
        assert_eq!(
            pod_name
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
    }

    #[test]
    fn engine_settings_become_flags_and_extra_args_come_last() {
        let node = InferenceNode::test().with_engine(EngineSettings {
            context_size: Some(8192),
            parallel: Some(8),
            gpu_layers: Some(20),
            threads: Some(2),
            batch_size: Some(512),
            flash_attention: Some(true),
            extra_args: vec!["--ctx-size".into(), "16384".into()],
            ..EngineSettings::default()
        });
        let args = args(&build(&node));
        assert_eq!(flag(&args, "--ctx-size"), Some("8192"));
        assert_eq!(flag(&args, "--parallel"), Some("8"));
        assert_eq!(flag(&args, "--gpu-layers"), Some("20"));
        assert_eq!(flag(&args, "--threads"), Some("2"));
        assert_eq!(flag(&args, "--batch-size"), Some("512"));
        assert_eq!(flag(&args, "--flash-attention"), Some("on"));
        assert_eq!(&args[args.len() - 2..], ["--ctx-size", "16384"]);
    }

    #[test]
    fn replicas_share_the_operators_private_swarm_unless_they_name_their_own_key() {
        let key = "/key/swarm/psk/1.0.0/\n/base16/\nabcd\n".to_string();
        let private = OperatorConfig {
            swarm_key: Some(key.clone()),
            ..OperatorConfig::default()
        };
        // The operator's key, copied into the resource's namespace and mounted.
        let node = InferenceNode::test();
        let children = desired(&node, &private).unwrap();
        let secret = children.swarm_key.as_ref().expect("a copy of the key");
        assert_eq!(secret.metadata.name.as_deref(), Some("gemma-swarm-key"));
        assert_eq!(secret.metadata.owner_references.as_ref().unwrap().len(), 1);
        assert_eq!(secret.string_data.as_ref().unwrap()["psk"], key);
        assert_eq!(
            flag(&args(&children), "--swarm-key"),
            Some("/var/run/llamanet/swarm-key/psk")
        );
        let mounted = volume(pod_spec(&children), "swarm-key");
        assert_eq!(
            mounted.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("gemma-swarm-key")
        );
        // A resource's own key wins, and no copy is made.
        let own = InferenceNode::test().with_swarm(SwarmSettings {
            private_key_secret: Some(SecretKeyRef {
                name: "shared-across-clusters".into(),
                key: "key".into(),
            }),
            ..SwarmSettings::default()
        });
        let children = desired(&own, &private).unwrap();
        assert!(children.swarm_key.is_none());
        assert_eq!(
            flag(&args(&children), "--swarm-key"),
            Some("/var/run/llamanet/swarm-key/key")
        );
        // An operator in a public swarm: no key anywhere.
        let children = build(&node);
        assert!(children.swarm_key.is_none());
        assert_eq!(flag(&args(&children), "--swarm-key"), None);
    }

    #[test]
    fn swarm_bootstrap_comes_from_the_operator_then_the_spec() {
        let node = InferenceNode::test().with_swarm(SwarmSettings {
            bootstrap_peers: vec!["/dns4/peer.example.com/tcp/4001".into()],
            cluster: Some("eu-1".into()),
            zone: Some("eu-1a".into()),
            private_key_secret: Some(SecretKeyRef {
                name: "swarm".into(),
                key: "psk".into(),
            }),
            port: 4100,
        });
        let config = OperatorConfig {
            bootstrap_peers: vec!["/dns4/llamanet-operator.llamanet.svc/tcp/4001".into()],
            ..OperatorConfig::default()
        };
        let children = desired(&node, &config).unwrap();
        let args = args(&children);
        let bootstrap: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "--bootstrap")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(
            bootstrap,
            [
                "/dns4/llamanet-operator.llamanet.svc/tcp/4001",
                "/dns4/peer.example.com/tcp/4001"
            ]
        );
        assert_eq!(flag(&args, "--cluster"), Some("eu-1"));
        assert_eq!(flag(&args, "--zone"), Some("eu-1a"));
        assert_eq!(flag(&args, "--swarm-port"), Some("4100"));
        assert_eq!(
            flag(&args, "--swarm-key"),
            Some("/var/run/llamanet/swarm-key/psk")
        );
        let spec = pod_spec(&children);
        assert_eq!(
            volume(spec, "swarm-key")
                .secret
                .as_ref()
                .unwrap()
                .secret_name
                .as_deref(),
            Some("swarm")
        );
        let swarm_port = server(&children)
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some("swarm"))
            .unwrap();
        assert_eq!(swarm_port.container_port, 4100);
        assert_eq!(
            children
                .swarm_service
                .spec
                .as_ref()
                .unwrap()
                .ports
                .as_ref()
                .unwrap()[0]
                .port,
            4100
        );
    }

    /// A container's command line as the kubelet runs it: `$(VAR)` references to the pod's
    /// environment expanded.
    fn external_node() -> InferenceNode {
        let mut node = InferenceNode::test().with_engine(EngineSettings {
            kind: crate::crd::EngineKind::External,
            parallel: Some(3),
            external: Some(ExternalEngine {
                image: "ghcr.io/ggml-org/llama.cpp:server".into(),
                args: vec![
                    "-m".into(),
                    "$(LLAMANET_MODEL_PATH)".into(),
                    "--port".into(),
                    "8000".into(),
                ],
                port: 8000,
                resources: Some(ResourceRequirements {
                    limits: Some(BTreeMap::from([(
                        "memory".to_string(),
                        Quantity("2Gi".into()),
                    )])),
                    ..ResourceRequirements::default()
                }),
                ..ExternalEngine::default()
            }),
            ..EngineSettings::default()
        });
        node.spec.resources.gpu = 1;
        node.spec.resources.memory = Some(Quantity("8Gi".into()));
        node
    }

    #[test]
    fn an_external_engine_runs_beside_the_sidecar_with_the_gpus_and_the_model() {
        use llamanet_node::cli::Command;

        let children = build(&external_node());
        let spec = pod_spec(&children);
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [SERVER_CONTAINER, ENGINE_CONTAINER]);

        let Ok(Command::Sidecar(sidecar)) = Command::parse_args(expanded_args(server(&children)))
        else {
            panic!("the node container does not run the sidecar");
        };
        assert_eq!(sidecar.upstream, "http://127.0.0.1:8000");
        assert_eq!(
            sidecar.engine,
            llamanet_node::cli::UpstreamKind::LlamaServer
        );
        assert_eq!(sidecar.model_id.as_deref(), Some("gemma-3-270m-q4_k_m"));
        assert_eq!(sidecar.slots.get(), 3);
        assert_eq!(sidecar.http.port, API_CONTAINER_PORT as u16);
        // The sidecar requests nothing; the engine gets the GPU, and its own memory limit
        // wins over spec.resources.
        assert_eq!(
            server(&children).resources,
            Some(ResourceRequirements::default())
        );

        let engine = &spec.containers[1];
        assert_eq!(
            engine.image.as_deref(),
            Some("ghcr.io/ggml-org/llama.cpp:server")
        );
        assert_eq!(engine.command, None, "the image's entrypoint runs");
        let limits = engine.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["nvidia.com/gpu"], Quantity("1".into()));
        assert_eq!(limits["memory"], Quantity("2Gi".into()));
        let env = engine.env.as_ref().unwrap();
        let model_path = env
            .iter()
            .find(|e| e.name == "LLAMANET_MODEL_PATH")
            .unwrap();
        let mounts = engine.volume_mounts.as_ref().unwrap();
        assert!(
            mounts.iter().any(|m| model_path
                .value
                .as_deref()
                .unwrap()
                .starts_with(&m.mount_path)),
            "the model path {model_path:?} is under a mount of the engine: {mounts:?}"
        );
        let security = engine.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
    }

    fn expanded_args(c: &Container) -> Vec<String> {
        c.args
            .iter()
            .flatten()
            .map(|a| {
                a.replace("$(POD_IP)", "10.1.2.3")
                    .replace("$(POD_NAME)", "gemma-0")
                    .replace("$(POD_NAMESPACE)", "ai")
            })
            .collect()
    }

    /// Every command line the operator generates is one the node's own parser accepts, with
    /// the values meant (the node and operator are built from one workspace, and this is
    /// where a renamed flag on either side shows).
    #[test]
    fn every_generated_command_line_parses_as_the_node_parses_it() {
        use llamanet_node::cli::{Command, FlashAttention};

        let full = InferenceNode::test()
            .with_engine(EngineSettings {
                context_size: Some(8192),
                parallel: Some(8),
                gpu_layers: Some(20),
                threads: Some(2),
                batch_size: Some(256),
                flash_attention: Some(false),
                extra_args: vec!["--ctx-size".into(), "16384".into()],
                ..EngineSettings::default()
            })
            .with_swarm(SwarmSettings {
                bootstrap_peers: vec!["/dns4/peer.example.com/tcp/4001".into()],
                cluster: Some("eu-1".into()),
                zone: Some("eu-1a".into()),
                private_key_secret: Some(SecretKeyRef {
                    name: "swarm".into(),
                    key: "psk".into(),
                }),
                port: 4100,
            });
        for node in [InferenceNode::test(), full.clone(), external_node()] {
            let children = build(&node);
            let spec = pod_spec(&children);
            for c in spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .filter(|c| c.command.as_deref() == Some(&[NODE_COMMAND.to_string()]))
            {
                let args = expanded_args(c);
                if let Err(err) = Command::parse_args(&args) {
                    panic!(
                        "container {} runs `llamanet {}`:\n{err}",
                        c.name,
                        args.join(" ")
                    );
                }
            }
        }

        let Ok(Command::Serve(serve)) = Command::parse_args(expanded_args(server(&build(&full))))
        else {
            panic!("the server container does not run serve");
        };
        assert_eq!(serve.http.host.to_string(), "10.1.2.3");
        assert_eq!(serve.http.port, 8080);
        assert_eq!(serve.model_id.as_deref(), Some("gemma-3-270m-q4_k_m"));
        assert_eq!(serve.parallel.get(), 8);
        assert_eq!(serve.threads.map(|t| t.get()), Some(2));
        assert_eq!(serve.batch_size.get(), 256);
        assert_eq!(serve.gpu_layers, Some(20));
        assert_eq!(serve.flash_attention, FlashAttention::Off);
        // extraArgs come last and win over the operator's own flags.
        assert_eq!(serve.ctx_size.get(), 16384);
        let swarm = &serve.swarm;
        assert_eq!(swarm.swarm_port, 4100);
        assert_eq!(
            swarm.heartbeat_interval,
            OperatorConfig::default().heartbeat_interval.as_secs_f64()
        );
        assert_eq!(
            swarm.identity.as_deref(),
            Some(std::path::Path::new("/var/run/llamanet/identity/gemma-0"))
        );
        assert_eq!(swarm.bootstrap, ["/dns4/peer.example.com/tcp/4001"]);
        assert_eq!(swarm.inference_node.as_deref(), Some("ai/gemma"));
        assert_eq!(swarm.pod.as_deref(), Some("gemma-0"));
        assert_eq!(
            (swarm.cluster.as_str(), swarm.zone.as_str()),
            ("eu-1", "eu-1a")
        );
        assert_eq!(
            swarm.swarm_key.as_deref(),
            Some(std::path::Path::new("/var/run/llamanet/swarm-key/psk"))
        );
    }

    #[test]
    fn replicas_fetch_the_model_from_each_other_in_a_private_swarm() {
        let private = OperatorConfig {
            swarm_key: Some("/key/swarm/psk/1.0.0/\n/base16/\nabcd\n".into()),
            bootstrap_peers: vec!["/dns4/llamanet-operator.llamanet.svc/tcp/4001".into()],
            ..OperatorConfig::default()
        };
        let init_args = |children: &Children| {
            pod_spec(children).init_containers.as_ref().unwrap()[0]
                .args
                .clone()
                .unwrap()
        };
        let children = desired(&InferenceNode::test(), &private).unwrap();
        let fetch = init_args(&children);
        assert_eq!(
            flag(&fetch, "--bootstrap"),
            Some("/dns4/llamanet-operator.llamanet.svc/tcp/4001")
        );
        assert_eq!(
            flag(&fetch, "--swarm-key"),
            Some("/var/run/llamanet/swarm-key/psk")
        );
        assert_eq!(flag(&fetch, "--pod"), Some("$(POD_NAME)"));
        assert_eq!(flag(&fetch, "--wait-for-peers"), Some("900"));
        let init = &pod_spec(&children).init_containers.as_ref().unwrap()[0];
        assert!(
            init.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "swarm-key" && m.read_only == Some(true))
        );
        // The server verifies the file as it loads it and then shares it.
        let serve = args(&children);
        assert_eq!(flag(&serve, "--sha256"), Some("ab".repeat(32).as_str()));
        assert_eq!(flag(&serve, "--weights-uploads"), Some("4"));
        assert_eq!(flag(&serve, "--weights-upload-rate"), None);

        // Limits from the spec.
        let mut limited = InferenceNode::test();
        limited.spec.model.sharing = Some(crate::crd::WeightSharing {
            enabled: None,
            max_uploads: Some(2),
            upload_mib_per_second: Some(20),
        });
        let serve = args(&desired(&limited, &private).unwrap());
        assert_eq!(flag(&serve, "--weights-uploads"), Some("2"));
        assert_eq!(flag(&serve, "--weights-upload-rate"), Some("20"));

        // Turned off, or in a public swarm: the URL only, and nothing shared.
        let mut off = InferenceNode::test();
        off.spec.model.sharing = Some(crate::crd::WeightSharing {
            enabled: Some(false),
            ..Default::default()
        });
        for (node, config) in [
            (&off, &private),
            (&InferenceNode::test(), &OperatorConfig::default()),
        ] {
            let children = desired(node, config).unwrap();
            let fetch = init_args(&children);
            assert_eq!(flag(&fetch, "--bootstrap"), None);
            assert_eq!(flag(&fetch, "--swarm-key"), None);
            assert_eq!(flag(&args(&children), "--weights-uploads"), Some("0"));
        }
    }

    #[test]
    fn url_model_is_fetched_and_verified_by_an_init_container() {
        let children = build(&InferenceNode::test());
        let spec = pod_spec(&children);
        let init = spec.init_containers.as_ref().unwrap();
        assert_eq!(init.len(), 1);
        let fetch = &init[0];
        assert_eq!(fetch.name, FETCH_CONTAINER);
        assert_eq!(fetch.command, Some(vec!["llamanet".to_owned()]));
        assert_eq!(
            fetch.args.as_ref().unwrap(),
            &[
                "fetch",
                "--source",
                "https://models.example.com/gemma-3-270m-q4_k_m.gguf",
                "--dest",
                "/models/gemma-3-270m-q4_k_m.gguf",
                "--sha256",
                &"ab".repeat(32),
            ]
        );
        assert!(volume(spec, "models").empty_dir.is_some());
        let mounts = fetch.volume_mounts.as_ref().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.name == "models" && m.mount_path == "/models")
        );
        assert_eq!(
            fetch
                .security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
    }

    #[test]
    fn cache_pvc_replaces_the_empty_dir() {
        let node = InferenceNode::test().with_model(model(serde_json::json!({
            "url": "https://models.example.com/m.gguf?download=true",
            "sha256": "ab".repeat(32),
            "cachePvc": "model-cache",
        })));
        let children = build(&node);
        let models = volume(pod_spec(&children), "models");
        let claim = models.persistent_volume_claim.as_ref().unwrap();
        assert_eq!(claim.claim_name, "model-cache");
        // The query string is not part of the file name.
        assert_eq!(flag(&args(&children), "--model"), Some("/models/m.gguf"));
    }

    #[test]
    fn host_path_model_without_checksum_is_served_in_place() {
        let node = InferenceNode::test().with_model(model(serde_json::json!({
            "path": "/var/lib/llamanet/models/gemma.gguf",
        })));
        let children = build(&node);
        let spec = pod_spec(&children);
        assert!(spec.init_containers.is_none());
        let host = volume(spec, "model-source").host_path.as_ref().unwrap();
        assert_eq!(host.path, "/var/lib/llamanet/models/gemma.gguf");
        assert_eq!(host.type_.as_deref(), Some("File"));
        assert_eq!(
            flag(&args(&children), "--model"),
            Some("/model-source/gemma.gguf")
        );
        let mount = server(&children)
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "model-source")
            .unwrap();
        assert_eq!(mount.mount_path, "/model-source/gemma.gguf");
        assert_eq!(mount.read_only, Some(true));
    }

    #[test]
    fn host_path_model_with_checksum_is_verified_into_the_cache() {
        let node = InferenceNode::test().with_model(model(serde_json::json!({
            "path": "/var/lib/llamanet/models/gemma.gguf",
            "sha256": "cd".repeat(32),
            "name": "gemma-3",
        })));
        let children = build(&node);
        let fetch = &pod_spec(&children).init_containers.as_ref().unwrap()[0];
        let fetch_args = fetch.args.as_ref().unwrap();
        assert_eq!(
            flag(fetch_args, "--source"),
            Some("/model-source/gemma.gguf")
        );
        assert_eq!(flag(fetch_args, "--dest"), Some("/models/gemma.gguf"));
        let args = args(&children);
        assert_eq!(flag(&args, "--model"), Some("/models/gemma.gguf"));
        assert_eq!(flag(&args, "--model-id"), Some("gemma-3"));
    }

    #[test]
    fn pvc_model_is_read_from_the_claim() {
        let node = InferenceNode::test().with_model(model(serde_json::json!({
            "pvc": "models",
            "path": "/llama/gemma.gguf",
        })));
        let children = build(&node);
        let claim = volume(pod_spec(&children), "model-source")
            .persistent_volume_claim
            .as_ref()
            .unwrap();
        assert_eq!(claim.claim_name, "models");
        assert_eq!(claim.read_only, Some(true));
        assert_eq!(
            flag(&args(&children), "--model"),
            Some("/model-source/llama/gemma.gguf")
        );
    }

    #[test]
    fn gpus_become_limits_and_a_toleration() {
        let mut node = InferenceNode::test().with_gpus(2);
        node.spec.resources.memory = Some(Quantity("8Gi".into()));
        node.spec.resources.cpu = Some(Quantity("4".into()));
        let children = build(&node);
        let resources = server(&children).resources.as_ref().unwrap();
        let limits = resources.limits.as_ref().unwrap();
        assert_eq!(limits["nvidia.com/gpu"], Quantity("2".into()));
        assert_eq!(limits["memory"], Quantity("8Gi".into()));
        assert!(
            !limits.contains_key("cpu"),
            "no CPU limit: decoding must not be throttled"
        );
        let requests = resources.requests.as_ref().unwrap();
        assert_eq!(requests["cpu"], Quantity("4".into()));
        let tolerations = pod_spec(&children).tolerations.as_ref().unwrap();
        assert!(
            tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some("nvidia.com/gpu"))
        );

        let cpu_only = build(&InferenceNode::test());
        assert!(
            server(&cpu_only)
                .resources
                .as_ref()
                .unwrap()
                .limits
                .is_none()
        );
        assert!(pod_spec(&cpu_only).tolerations.is_none());
    }

    #[test]
    fn pods_are_locked_down() {
        let children = build(&InferenceNode::test());
        let spec = pod_spec(&children);
        let pod_sc = spec.security_context.as_ref().unwrap();
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        assert_eq!(pod_sc.run_as_user, Some(65532));
        assert_eq!(spec.automount_service_account_token, Some(false));
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
            let drop = sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap();
            assert_eq!(drop, &["ALL"], "{}", c.name);
            // A read-only root filesystem still needs writable scratch space.
            assert!(
                c.volume_mounts
                    .as_ref()
                    .unwrap()
                    .iter()
                    .any(|m| m.mount_path == SCRATCH_DIR && m.read_only.is_none())
            );
            let env = c.env.as_ref().unwrap();
            assert!(
                env.iter()
                    .any(|e| e.name == "TMPDIR" && e.value.as_deref() == Some(SCRATCH_DIR))
            );
        }
    }

    #[test]
    fn probes_check_health_and_stopping_drains_first() {
        let children = build(&InferenceNode::test());
        let c = server(&children);
        for probe in [&c.startup_probe, &c.readiness_probe, &c.liveness_probe] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.path.as_deref(), Some("/health"));
            assert_eq!(get.port, IntOrString::String("http".into()));
        }
        // Loading a big model takes minutes: the startup probe allows 30 of them.
        let startup = c.startup_probe.as_ref().unwrap();
        assert_eq!(
            startup.period_seconds.unwrap() * startup.failure_threshold.unwrap(),
            1800
        );
        let pre_stop = c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
        assert_eq!(pre_stop.sleep.as_ref().unwrap().seconds, DRAIN_SECONDS);
        assert!(
            pod_spec(&children)
                .termination_grace_period_seconds
                .unwrap()
                > DRAIN_SECONDS
        );
    }

    #[test]
    fn api_key_comes_from_the_secret() {
        let children = build(&InferenceNode::test().with_api_key("gemma-keys", "api-key"));
        let env = server(&children).env.as_ref().unwrap();
        let key = env.iter().find(|e| e.name == API_KEY_ENV).unwrap();
        assert!(
            key.value.is_none(),
            "the key itself never lands in the pod spec"
        );
        let secret = key
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(secret.name, "gemma-keys");
        assert_eq!(secret.key, "api-key");
    }

    #[test]
    fn identity_secret_is_mounted_for_the_per_pod_key() {
        let children = build(&InferenceNode::test());
        let identity = volume(pod_spec(&children), "identity");
        assert_eq!(
            identity.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("gemma-identity")
        );
        assert_eq!(identity_secret_name("gemma"), "gemma-identity");
    }

    #[test]
    fn image_comes_from_the_spec_or_the_config() {
        let config = OperatorConfig {
            default_image: "registry.local/llamanet-node:dev".into(),
            ..OperatorConfig::default()
        };
        let node = InferenceNode::test();
        let children = desired(&node, &config).unwrap();
        assert_eq!(
            server(&children).image.as_deref(),
            Some("registry.local/llamanet-node:dev")
        );
        let mut pinned = node;
        pinned.spec.image = Some("ghcr.io/llamanet/llamanet-node:0.1.0-cuda".into());
        let children = desired(&pinned, &config).unwrap();
        assert_eq!(
            server(&children).image.as_deref(),
            Some("ghcr.io/llamanet/llamanet-node:0.1.0-cuda")
        );
        // Beside an external engine the sidecar runs the image without llama.cpp, unless the
        // resource names its own.
        let external = external_node();
        let children = desired(&external, &config).unwrap();
        assert_eq!(
            server(&children).image.as_deref(),
            Some(crate::config::DEFAULT_ROUTER_IMAGE)
        );
        assert!(crate::config::DEFAULT_ROUTER_IMAGE.contains("/llamanet-router:"));
        let mut pinned = external;
        pinned.spec.image = Some("registry.local/llamanet-node:dev".into());
        let children = desired(&pinned, &config).unwrap();
        assert_eq!(
            server(&children).image.as_deref(),
            Some("registry.local/llamanet-node:dev")
        );
    }

    #[test]
    fn services_expose_the_api_and_the_swarm() {
        let mut node = InferenceNode::test();
        node.spec.service.type_ = crate::crd::ServiceType::LoadBalancer;
        node.spec.service.port = 80;
        let children = build(&node);
        let api = children.api_service.spec.as_ref().unwrap();
        assert_eq!(children.api_service.metadata.name.as_deref(), Some("gemma"));
        assert_eq!(api.type_.as_deref(), Some("LoadBalancer"));
        let port = &api.ports.as_ref().unwrap()[0];
        assert_eq!(port.port, 80);
        assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
        assert_eq!(api.selector, Some(selector_labels("gemma")));

        let swarm = children.swarm_service.spec.as_ref().unwrap();
        assert_eq!(
            children.swarm_service.metadata.name.as_deref(),
            Some("gemma-swarm")
        );
        assert_eq!(swarm.cluster_ip.as_deref(), Some("None"));
        assert_eq!(swarm.publish_not_ready_addresses, Some(true));
        assert_eq!(endpoint(&node), "http://gemma.ai.svc:80/v1");
        assert_eq!(
            selector_string("gemma"),
            "app.kubernetes.io/instance=gemma,app.kubernetes.io/name=llamanet-node"
        );
    }
}
