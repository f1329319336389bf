//! Container probes (startup, readiness, liveness): HTTP GET, TCP socket and
//! exec, with the timeout of the probe. gRPC probes are reported as failing
//! with a log line, since nothing of ours uses them.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::container::{ProcessSpec, spawn};

/// Probe timing, with Kubernetes' defaults filled in.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe) -> Self {
        let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
        Self {
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// Runs the probe once. `Err` carries why it failed.
pub async fn run_once(
    probe: &Probe,
    container: &Container,
    pod_ip: &str,
    exec_spec: &ProcessSpec,
    http: &reqwest::Client,
) -> Result<(), String> {
    let timeout = Timing::of(probe).timeout;
    if let Some(get) = &probe.http_get {
        let port = port_number(&get.port, container)?;
        let host = get
            .host
            .as_deref()
            .filter(|h| !h.is_empty())
            .unwrap_or(pod_ip);
        let scheme = get.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
        let path = get.path.as_deref().unwrap_or("/");
        let url = format!("{scheme}://{host}:{port}{path}");
        let mut req = http.get(&url).timeout(timeout);
        for h in get.http_headers.iter().flatten() {
            req = req.header(&h.name, &h.value);
        }
        let resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status().as_u16();
        return if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("GET {url}: HTTP {status}"))
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port_number(&tcp.port, container)?;
        let host = tcp
            .host
            .as_deref()
            .filter(|h| !h.is_empty())
            .unwrap_or(pod_ip);
        let addr = format!("{host}:{port}");
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
            Err(_) => Err(format!("connect {addr}: timed out after {timeout:?}")),
        };
    }
    if let Some(exec) = &probe.exec {
        return run_exec(
            exec.command.as_deref().unwrap_or_default(),
            exec_spec,
            timeout,
        )
        .await;
    }
    Err("probe type not supported by the local node (use httpGet, tcpSocket or exec)".into())
}

/// Runs a command in the container's environment (exec probes, exec hooks).
pub async fn run_exec(
    command: &[String],
    base: &ProcessSpec,
    timeout: Duration,
) -> Result<(), String> {
    let spec = ProcessSpec {
        argv: command.to_vec(),
        ..base.clone()
    };
    let mut child = spawn(&spec).map_err(|e| format!("{e:#}"))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{command:?} exited with {status}")),
        Ok(Err(e)) => Err(format!("{command:?}: {e}")),
        Err(_) => {
            if let Some(pid) = child.id() {
                crate::process::signal_group(pid, libc::SIGKILL);
            }
            let _ = child.wait().await;
            Err(format!("{command:?} timed out after {timeout:?}"))
        }
    }
}

/// A numeric port, or a named one looked up in the container's ports.
pub fn port_number(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("bad port {n}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("container {:?} has no port named {name:?}", container.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn named_ports() {
        let c = Container {
            name: "node".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            port_number(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(port_number(&IntOrString::Int(9000), &c), Ok(9000));
        assert!(port_number(&IntOrString::String("grpc".into()), &c).is_err());
    }

    #[test]
    fn defaults_match_kubernetes() {
        let t = Timing::of(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!(t.failure_threshold, 3);
        assert_eq!(t.success_threshold, 1);
    }
}
