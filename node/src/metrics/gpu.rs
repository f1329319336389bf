//! GPU figures from NVIDIA's management library (NVML), behind the `nvml` feature.
//!
//! NVML is loaded when the node starts (`libnvidia-ml.so.1`, which the NVIDIA container
//! runtime mounts into GPU pods). Where it cannot be loaded (no driver, no GPU) the node
//! exports no GPU series at all rather than zeros that would look like an idle GPU.

use std::sync::atomic::AtomicU64;

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// Which GPU a series is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    /// NVML's device index.
    pub gpu: String,
    /// Product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
}

/// The GPU series, registered only where NVML works.
#[derive(Debug)]
pub struct GpuFamilies {
    utilization: Family<GpuLabels, Gauge<f64, AtomicU64>>,
    memory_used: Family<GpuLabels, Gauge>,
    memory_total: Family<GpuLabels, Gauge>,
    temperature: Family<GpuLabels, Gauge>,
    power: Family<GpuLabels, Gauge<f64, AtomicU64>>,
}

impl GpuFamilies {
    /// Registers the families (under the registry's `llamanet` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let families = GpuFamilies {
            utilization: Family::default(),
            memory_used: Family::default(),
            memory_total: Family::default(),
            temperature: Family::default(),
            power: Family::default(),
        };
        registry.register(
            "gpu_utilization_ratio",
            "Share of the last sample period in which the GPU ran kernels",
            families.utilization.clone(),
        );
        registry.register_with_unit(
            "gpu_memory_used",
            "GPU memory allocated",
            Unit::Bytes,
            families.memory_used.clone(),
        );
        registry.register_with_unit(
            "gpu_memory_total",
            "GPU memory installed",
            Unit::Bytes,
            families.memory_total.clone(),
        );
        registry.register_with_unit(
            "gpu_temperature",
            "GPU core temperature",
            Unit::Celsius,
            families.temperature.clone(),
        );
        registry.register_with_unit(
            "gpu_power",
            "GPU power draw",
            Unit::Other("watts".into()),
            families.power.clone(),
        );
        families
    }

    /// Sets one GPU's figures; a figure the device does not report is left out.
    pub fn set(&self, labels: &GpuLabels, sample: &GpuSample) {
        if let Some(v) = sample.utilization_ratio {
            self.utilization.get_or_create(labels).set(v);
        }
        if let Some(v) = sample.memory_used_bytes {
            self.memory_used
                .get_or_create(labels)
                .set(saturating_i64(v));
        }
        if let Some(v) = sample.memory_total_bytes {
            self.memory_total
                .get_or_create(labels)
                .set(saturating_i64(v));
        }
        if let Some(v) = sample.temperature_celsius {
            self.temperature.get_or_create(labels).set(i64::from(v));
        }
        if let Some(v) = sample.power_watts {
            self.power.get_or_create(labels).set(v);
        }
    }
}

/// One reading of one GPU.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuSample {
    pub utilization_ratio: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub temperature_celsius: Option<u32>,
    pub power_watts: Option<f64>,
}

/// NVML and the series it feeds.
pub struct Gpus {
    nvml: Nvml,
    families: GpuFamilies,
}

impl std::fmt::Debug for Gpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpus").finish_non_exhaustive()
    }
}

impl Gpus {
    /// Loads NVML and registers the GPU series; `None` (logged) where NVML is not available.
    pub fn init(registry: &mut Registry) -> Option<Gpus> {
        match Nvml::init() {
            Ok(nvml) => {
                let count = nvml.device_count().unwrap_or(0);
                tracing::info!(gpus = count, "NVML loaded: exporting GPU metrics");
                Some(Gpus {
                    nvml,
                    families: GpuFamilies::register(registry),
                })
            }
            Err(err) => {
                tracing::info!(%err, "NVML not available: no GPU metrics");
                None
            }
        }
    }

    /// Reads every GPU now (called on each scrape).
    pub fn refresh(&self) {
        let count = self.nvml.device_count().unwrap_or(0);
        for index in 0..count {
            let Ok(device) = self.nvml.device_by_index(index) else {
                continue;
            };
            let labels = GpuLabels {
                gpu: index.to_string(),
                name: device.name().unwrap_or_default(),
            };
            let memory = device.memory_info().ok();
            let sample = GpuSample {
                utilization_ratio: device
                    .utilization_rates()
                    .ok()
                    .map(|u| f64::from(u.gpu) / 100.0),
                memory_used_bytes: memory.as_ref().map(|m| m.used),
                memory_total_bytes: memory.as_ref().map(|m| m.total),
                temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok(),
                // NVML reports milliwatts.
                power_watts: device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            };
            self.families.set(&labels, &sample);
        }
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn gpu_series_render_with_their_names_and_units() {
        let mut registry = Registry::with_prefix("llamanet");
        let families = GpuFamilies::register(&mut registry);
        let labels = GpuLabels {
            gpu: "0".into(),
            name: "NVIDIA H100".into(),
        };
        families.set(
            &labels,
            &GpuSample {
                utilization_ratio: Some(0.5),
                memory_used_bytes: Some(1 << 30),
                memory_total_bytes: Some(80 << 30),
                temperature_celsius: Some(61),
                power_watts: Some(312.5),
            },
        );
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            r#"llamanet_gpu_utilization_ratio{gpu="0",name="NVIDIA H100"} 0.5"#,
            r#"llamanet_gpu_memory_used_bytes{gpu="0",name="NVIDIA H100"} 1073741824"#,
            r#"llamanet_gpu_memory_total_bytes{gpu="0",name="NVIDIA H100"} 85899345920"#,
            r#"llamanet_gpu_temperature_celsius{gpu="0",name="NVIDIA H100"} 61"#,
            r#"llamanet_gpu_power_watts{gpu="0",name="NVIDIA H100"} 312.5"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        for name in super::super::GPU_METRIC_NAMES {
            assert!(text.contains(name), "{name} not registered");
        }
    }

    #[test]
    fn a_figure_the_device_does_not_report_is_left_out() {
        let mut registry = Registry::with_prefix("llamanet");
        let families = GpuFamilies::register(&mut registry);
        let labels = GpuLabels {
            gpu: "1".into(),
            name: "T4".into(),
        };
        families.set(
            &labels,
            &GpuSample {
                memory_total_bytes: Some(16 << 30),
                ..GpuSample::default()
            },
        );
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"llamanet_gpu_memory_total_bytes{gpu="1",name="T4"}"#));
        assert!(!text.contains(r#"llamanet_gpu_power_watts{"#), "{text}");
    }
}
