//! The node's Prometheus metrics: one `prometheus-client` registry holding every metric
//! name (prefix `llamanet_`), rendered as text for `GET /metrics`.
//!
//! Request handlers count requests, tokens and latencies as they happen. Figures that
//! belong to someone else (the engine's busy slots, queue and KV cache; the process and the
//! machine through `sysinfo`) are read when Prometheus scrapes, so they are never stale and
//! nothing polls in between. This module does not depend on the engine: the API layer
//! passes an [`EngineGauges`] snapshot in.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// Labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route path, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// HTTP status code.
    pub status: String,
}

/// Labels of per-endpoint histograms.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

/// Engine figures at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineGauges {
    pub slots_busy: i64,
    pub slots_total: i64,
    pub queue_depth: i64,
    pub queue_capacity: i64,
    pub kv_cache_cells_used: i64,
    pub kv_cache_cells_total: i64,
    /// Share of the KV cache in use (0 to 1) where the engine tells it directly (an
    /// external engine); otherwise it comes from the cells.
    pub kv_cache_usage: Option<f64>,
    pub tokens_per_second: f64,
}

impl EngineGauges {
    /// The KV cache in use, 0 to 1: the engine's own figure, or cells used over cells.
    pub fn kv_cache_usage_ratio(&self) -> f64 {
        let ratio = match self.kv_cache_usage {
            Some(ratio) => ratio,
            None if self.kv_cache_cells_total > 0 => {
                self.kv_cache_cells_used as f64 / self.kv_cache_cells_total as f64
            }
            None => 0.0,
        };
        if ratio.is_finite() {
            ratio.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// The Gateway API inference extension's model-server protocol, in LlamaNet's names: what an
/// endpoint picker reads from every node, built-in engine and sidecar alike (queued requests,
/// running requests, KV cache utilisation 0..1). The chart's endpoint picker configuration
/// (`charts/llamanet/files/endpoint-picker.yaml`) names the same series; a test keeps them so.
pub const MODEL_SERVER_PROTOCOL: ModelServerMetrics = ModelServerMetrics {
    queued_requests: "llamanet_queue_depth",
    running_requests: "llamanet_slots_busy",
    kv_cache_utilization: "llamanet_kv_cache_usage_ratio",
};

/// Metric names of the model-server protocol (see [`MODEL_SERVER_PROTOCOL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelServerMetrics {
    pub queued_requests: &'static str,
    pub running_requests: &'static str,
    pub kv_cache_utilization: &'static str,
}

#[cfg(feature = "nvml")]
pub mod gpu;
pub mod swarm;

pub use swarm::SWARM_METRIC_NAMES;

/// Series exported only where NVML works (feature `nvml`, NVIDIA driver present).
pub const GPU_METRIC_NAMES: &[&str] = &[
    "llamanet_gpu_utilization_ratio",
    "llamanet_gpu_memory_used_bytes",
    "llamanet_gpu_memory_total_bytes",
    "llamanet_gpu_temperature_celsius",
    "llamanet_gpu_power_watts",
];

/// The shortest time between two refreshes of the process and machine figures.
const SYSTEM_REFRESH: Duration = Duration::from_secs(1);

/// Every metric of the node, registered once in [`Metrics::new`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub prompt_tokens: Counter,
    pub cached_prompt_tokens: Counter,
    pub generated_tokens: Counter,
    pub time_to_first_token: Histogram,
    pub request_duration: Family<EndpointLabels, Histogram>,
    tokens_per_second: Gauge<f64, AtomicU64>,
    slots_busy: Gauge,
    slots_total: Gauge,
    queue_depth: Gauge,
    queue_capacity: Gauge,
    kv_cache_cells_used: Gauge,
    kv_cache_cells_total: Gauge,
    kv_cache_usage: Gauge<f64, AtomicU64>,
    pub model_load_seconds: Gauge<f64, AtomicU64>,
    pub model_loaded: Gauge,
    /// Model file uploads to peers (`crate::weights`).
    pub weights: crate::weights::seed::SeedStats,
    process_cpu_cores: Gauge<f64, AtomicU64>,
    process_resident_memory: Gauge,
    system_cpu_usage: Gauge<f64, AtomicU64>,
    system_memory_used: Gauge,
    system_memory_total: Gauge,
    /// `None` where sysinfo cannot read this platform; the system gauges then stay 0. With
    /// the time of its last refresh.
    system: Mutex<Option<(System, Option<Instant>)>>,
    /// Swarm and routing series, once the node has joined a swarm.
    swarm: Arc<swarm::SwarmSource>,
    /// `None` without NVML (no NVIDIA driver): then no GPU series exist.
    #[cfg(feature = "nvml")]
    gpus: Option<gpu::Gpus>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("llamanet");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by endpoint and status code",
            requests.clone(),
        );
        let prompt_tokens = Counter::default();
        registry.register(
            "prompt_tokens",
            "Prompt tokens of finished generations (cached ones included)",
            prompt_tokens.clone(),
        );
        let cached_prompt_tokens = Counter::default();
        registry.register(
            "cached_prompt_tokens",
            "Prompt tokens served from a slot's cached prefix instead of being evaluated",
            cached_prompt_tokens.clone(),
        );
        let generated_tokens = Counter::default();
        registry.register(
            "generated_tokens",
            "Tokens generated for clients",
            generated_tokens.clone(),
        );
        let time_to_first_token = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register_with_unit(
            "time_to_first_token",
            "From receiving a generation request to its first token (queueing included)",
            Unit::Seconds,
            time_to_first_token.clone(),
        );
        let request_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 14))
        });
        registry.register_with_unit(
            "request_duration",
            "From receiving a request to its last byte, by endpoint",
            Unit::Seconds,
            request_duration.clone(),
        );
        let tokens_per_second = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "tokens_per_second",
            "Generated tokens per second over the last few seconds, all slots together",
            tokens_per_second.clone(),
        );
        let slots_busy = Gauge::default();
        registry.register("slots_busy", "Slots serving a request", slots_busy.clone());
        let slots_total = Gauge::default();
        registry.register(
            "slots_capacity",
            "Slots (sequences decoded together)",
            slots_total.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Requests waiting for a free slot",
            queue_depth.clone(),
        );
        let queue_capacity = Gauge::default();
        registry.register(
            "queue_capacity",
            "Requests that may wait before new ones are refused",
            queue_capacity.clone(),
        );
        let kv_cache_cells_used = Gauge::default();
        registry.register(
            "kv_cache_cells_used",
            "KV cache cells holding a token (cached prefixes included)",
            kv_cache_cells_used.clone(),
        );
        let kv_cache_cells_total = Gauge::default();
        registry.register(
            "kv_cache_cells_capacity",
            "KV cache cells over all slots",
            kv_cache_cells_total.clone(),
        );
        let kv_cache_usage = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "kv_cache_usage_ratio",
            "Share of the KV cache holding tokens, 0 to 1 (the inference extension's KV cache utilisation)",
            kv_cache_usage.clone(),
        );
        let model_load_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "model_load",
            "Time the model took to load",
            Unit::Seconds,
            model_load_seconds.clone(),
        );
        let weights = crate::weights::seed::SeedStats::default();
        registry.register_with_unit(
            "weights_sent",
            "Bytes of this node's model file sent to peers that fetch it",
            Unit::Bytes,
            weights.bytes_sent.clone(),
        );
        registry.register(
            "weights_chunks_sent",
            "Chunks of this node's model file sent whole to peers",
            weights.chunks_sent.clone(),
        );
        registry.register(
            "weights_busy",
            "Chunk requests of peers answered busy (all upload slots taken)",
            weights.busy.clone(),
        );
        let model_loaded = Gauge::default();
        registry.register(
            "model_loaded",
            "1 once the model is loaded and requests are served",
            model_loaded.clone(),
        );
        let process_cpu_cores = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "process_cpu_cores",
            "CPU cores this process kept busy between the two latest reads (a second apart or more)",
            process_cpu_cores.clone(),
        );
        let process_resident_memory = Gauge::default();
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of this process",
            Unit::Bytes,
            process_resident_memory.clone(),
        );
        let system_cpu_usage = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "system_cpu_usage_ratio",
            "Busy share of all CPUs of the machine between the two latest reads (a second apart or more)",
            system_cpu_usage.clone(),
        );
        let system_memory_used = Gauge::default();
        registry.register_with_unit(
            "system_memory_used",
            "Memory in use on the machine",
            Unit::Bytes,
            system_memory_used.clone(),
        );
        let system_memory_total = Gauge::default();
        registry.register_with_unit(
            "system_memory_total",
            "Memory of the machine",
            Unit::Bytes,
            system_memory_total.clone(),
        );
        let swarm = Arc::new(swarm::SwarmSource::default());
        registry.register_collector(Box::new(Arc::clone(&swarm)));
        #[cfg(feature = "nvml")]
        let gpus = gpu::Gpus::init(&mut registry);
        Metrics {
            registry,
            requests,
            prompt_tokens,
            cached_prompt_tokens,
            generated_tokens,
            time_to_first_token,
            request_duration,
            tokens_per_second,
            slots_busy,
            slots_total,
            queue_depth,
            queue_capacity,
            kv_cache_cells_used,
            kv_cache_cells_total,
            kv_cache_usage,
            model_load_seconds,
            model_loaded,
            weights,
            process_cpu_cores,
            process_resident_memory,
            system_cpu_usage,
            system_memory_used,
            system_memory_total,
            system: Mutex::new(System::new().ok().map(|system| (system, None))),
            swarm,
            #[cfg(feature = "nvml")]
            gpus,
        }
    }

    /// Exports the figures of the swarm this node joined and of its router.
    pub fn attach_swarm(
        &self,
        swarm: Arc<crate::swarm::metrics::SwarmMetrics>,
        peers: crate::swarm::SharedPeerTable,
        route: Arc<crate::route::RouteMetrics>,
    ) {
        self.swarm.attach(swarm, peers, route);
    }

    /// Counts one answered request.
    pub fn count_request(&self, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    /// Records the duration of one request to `endpoint`.
    pub fn observe_duration(&self, endpoint: &str, seconds: f64) {
        self.request_duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_string(),
            })
            .observe(seconds);
    }

    /// Refreshes the scrape-time figures and renders everything in the Prometheus text
    /// format (OpenMetrics flavour, ending in `# EOF`).
    pub fn render(&self, engine: Option<EngineGauges>) -> String {
        if let Some(engine) = engine {
            self.slots_busy.set(engine.slots_busy);
            self.slots_total.set(engine.slots_total);
            self.queue_depth.set(engine.queue_depth);
            self.queue_capacity.set(engine.queue_capacity);
            self.kv_cache_cells_used.set(engine.kv_cache_cells_used);
            self.kv_cache_cells_total.set(engine.kv_cache_cells_total);
            self.kv_cache_usage.set(engine.kv_cache_usage_ratio());
            self.tokens_per_second.set(engine.tokens_per_second);
        }
        self.refresh_system();
        #[cfg(feature = "nvml")]
        if let Some(gpus) = &self.gpus {
            gpus.refresh();
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    fn refresh_system(&self) {
        let Ok(mut guard) = self.system.lock() else {
            return;
        };
        let Some((system, refreshed)) = guard.as_mut() else {
            return;
        };
        // CPU shares are measured between two refreshes: an endpoint picker reads `/metrics`
        // every 50 ms, which would make them shares of 50 ms (noise) and cost a /proc walk
        // per read. Between refreshes every scraper gets the last figures.
        if refreshed.is_some_and(|at| at.elapsed() < SYSTEM_REFRESH) {
            return;
        }
        *refreshed = Some(Instant::now());
        system.refresh_cpu_usage();
        system.refresh_memory();
        self.system_cpu_usage
            .set(f64::from(system.global_cpu_usage()) / 100.0);
        self.system_memory_used
            .set(i64::try_from(system.used_memory()).unwrap_or(i64::MAX));
        self.system_memory_total
            .set(i64::try_from(system.total_memory()).unwrap_or(i64::MAX));
        let pid = Pid::from_u32(std::process::id());
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        if let Some(process) = system.process(pid) {
            self.process_cpu_cores
                .set(f64::from(process.cpu_usage()) / 100.0);
            self.process_resident_memory
                .set(i64::try_from(process.memory()).unwrap_or(i64::MAX));
        }
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition, for scrapers and
/// linters that do not negotiate OpenMetrics (`curl`, `promtool check metrics`). The two
/// differ in what matters here only for counters: OpenMetrics names the family without the
/// `_total` its samples carry, the text format names it with. `# UNIT` and `# EOF` have no
/// text-format equivalent and are dropped.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_string()
                };
                out.push_str(&format!("{prefix}{name} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn text_format_names_counter_families_with_total() {
        let om = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total 3\n\
                  # HELP x_slots Slots.\n# TYPE x_slots gauge\nx_slots 4\n# UNIT x_slots slots\n# EOF\n";
        let text = openmetrics_to_text(om);
        assert_eq!(
            text,
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total 3\n\
             # HELP x_slots Slots.\n# TYPE x_slots gauge\nx_slots 4\n"
        );
    }
    use super::*;

    #[test]
    fn render_has_every_family_with_the_prefix() {
        let metrics = Metrics::new();
        metrics.count_request("/v1/completions", 200);
        metrics.observe_duration("/v1/completions", 0.5);
        metrics.generated_tokens.inc_by(7);
        let text = metrics.render(Some(EngineGauges {
            slots_busy: 1,
            slots_total: 4,
            kv_cache_cells_used: 256,
            kv_cache_cells_total: 1024,
            ..EngineGauges::default()
        }));
        for name in [
            "llamanet_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 1",
            "llamanet_generated_tokens_total 7",
            "llamanet_slots_busy 1",
            "llamanet_slots_capacity 4",
            "llamanet_time_to_first_token_seconds_bucket",
            "llamanet_request_duration_seconds_count{endpoint=\"/v1/completions\"} 1",
            "llamanet_system_memory_total_bytes",
            "llamanet_process_resident_memory_bytes",
            "llamanet_model_load_seconds",
            "llamanet_kv_cache_usage_ratio 0.25",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn kv_cache_usage_prefers_the_engines_figure_and_stays_within_0_and_1() {
        let cells = |used, total| EngineGauges {
            kv_cache_cells_used: used,
            kv_cache_cells_total: total,
            ..EngineGauges::default()
        };
        assert_eq!(cells(512, 2048).kv_cache_usage_ratio(), 0.25);
        // No cache (a router, an engine not loaded yet) is an empty one, not a division by 0.
        assert_eq!(cells(0, 0).kv_cache_usage_ratio(), 0.0);
        let told = |ratio| EngineGauges {
            kv_cache_usage: Some(ratio),
            ..cells(512, 2048)
        };
        assert_eq!(told(0.75).kv_cache_usage_ratio(), 0.75);
        // What an external engine claims is bounded: a picker compares it across pods.
        assert_eq!(told(7.0).kv_cache_usage_ratio(), 1.0);
        assert_eq!(told(-1.0).kv_cache_usage_ratio(), 0.0);
        assert_eq!(told(f64::NAN).kv_cache_usage_ratio(), 0.0);
    }

    #[test]
    fn the_charts_endpoint_picker_configuration_reads_these_names() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/llamanet/files/endpoint-picker.yaml"
        );
        let config = std::fs::read_to_string(path).unwrap();
        for (spec, name) in [
            ("queuedRequestsSpec", MODEL_SERVER_PROTOCOL.queued_requests),
            (
                "runningRequestsSpec",
                MODEL_SERVER_PROTOCOL.running_requests,
            ),
            ("kvUsageSpec", MODEL_SERVER_PROTOCOL.kv_cache_utilization),
        ] {
            assert!(
                config.contains(&format!("{spec}: {name}\n")),
                "{path} does not set {spec} to {name}"
            );
        }
    }

    #[test]
    fn the_model_server_protocol_names_series_the_node_exports() {
        let text = Metrics::new().render(Some(EngineGauges::default()));
        for name in [
            MODEL_SERVER_PROTOCOL.queued_requests,
            MODEL_SERVER_PROTOCOL.running_requests,
            MODEL_SERVER_PROTOCOL.kv_cache_utilization,
        ] {
            let text = openmetrics_to_text(&text);
            assert!(
                text.contains(&format!("# TYPE {name} gauge")),
                "{name} is not a gauge in\n{text}"
            );
        }
    }
}
