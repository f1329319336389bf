//! `llamanet check`: is the swarm healthy, in under three seconds? Reads the swarm once
//! (a node's `/v1/swarm` and `/health`, or a light peer of its own), prints a compact table
//! and the verdict, and answers with an exit code: 0 healthy, 1 unhealthy (with the reason),
//! 2 unreachable. The verdict itself is the pure [`evaluate`].

use std::time::Duration;

use libp2p::Multiaddr;

use super::source::SwarmSource;
use super::table;
use crate::swarm::PeerTableSnapshot;
use crate::swarm::discovery::Discovery;

/// What to check. `Default`: one healthy node, any model, 2 s.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckOptions {
    /// Join the swarm through this peer (a light, listen-only peer).
    #[arg(long, conflicts_with = "url")]
    pub bootstrap: Option<Multiaddr>,
    /// Or ask this node's HTTP API (`GET /v1/swarm`, `/health`).
    #[arg(long)]
    pub url: Option<String>,
    /// Bearer key for `--url` nodes that require one.
    #[arg(long, env = "LLAMANET_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Pre-shared key file of a private swarm, for `--bootstrap` (a Kubernetes swarm is
    /// private: the chart's `<release>-swarm-key` Secret).
    #[arg(long, env = "LLAMANET_SWARM_KEY")]
    pub swarm_key: Option<std::path::PathBuf>,
    /// Require this model to be served.
    #[arg(long)]
    pub model: Option<String>,
    /// Require at least this many healthy nodes (serving `--model` when given).
    #[arg(long, default_value_t = 1)]
    pub min_nodes: usize,
    /// How long to wait for the swarm (e.g. `2s`, `500ms`).
    #[arg(long, default_value = "2s", value_parser = super::parse_duration)]
    pub timeout: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            bootstrap: None,
            url: None,
            api_key: None,
            swarm_key: None,
            model: None,
            min_nodes: 1,
            timeout: Duration::from_secs(2),
        }
    }
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    Healthy,
    Unhealthy(Vec<String>),
    Unreachable(String),
}

impl CheckOutcome {
    /// The process exit code: 0 healthy, 1 unhealthy, 2 unreachable.
    pub fn exit_code(&self) -> i32 {
        match self {
            CheckOutcome::Healthy => 0,
            CheckOutcome::Unhealthy(_) => 1,
            CheckOutcome::Unreachable(_) => 2,
        }
    }
}

/// What a check found: the view (when reachable) and the verdict.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub source: String,
    pub view: Option<PeerTableSnapshot>,
    pub outcome: CheckOutcome,
}

impl CheckReport {
    /// The compact table, a summary line and the verdict with its reasons.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Some(view) = &self.view {
            text.push_str(&table::render_text(&table::rows(view), &table::COMPACT));
            text.push_str(&table::summary(view));
            text.push('\n');
        }
        match &self.outcome {
            CheckOutcome::Healthy => text.push_str("healthy\n"),
            CheckOutcome::Unhealthy(reasons) => {
                for reason in reasons {
                    text.push_str(&format!("unhealthy: {reason}\n"));
                }
            }
            CheckOutcome::Unreachable(reason) => {
                text.push_str(&format!("unreachable: {reason}\n"));
            }
        }
        text
    }
}

/// Checks the swarm, prints the report on stdout and returns the verdict. `Err` only for
/// options that make no sense (no source, or two).
pub async fn check(options: CheckOptions) -> anyhow::Result<CheckOutcome> {
    let report = inspect(&options).await?;
    print!("{}", report.render());
    Ok(report.outcome)
}

/// [`check`] without the printing.
pub async fn inspect(options: &CheckOptions) -> anyhow::Result<CheckReport> {
    let source = match SwarmSource::open(
        options.bootstrap.as_ref(),
        options.url.as_deref(),
        options.api_key.as_deref(),
        options.swarm_key.as_deref(),
        options.timeout,
    )
    .await
    {
        Ok(source) => source,
        // A bad flag combination is the caller's error; anything else (e.g. the light
        // peer cannot start) means we cannot reach the swarm.
        Err(err) if options.bootstrap.is_some() && options.url.is_none() => {
            return Ok(CheckReport {
                source: String::new(),
                view: None,
                outcome: CheckOutcome::Unreachable(format!("{err:#}")),
            });
        }
        Err(err) => return Err(err),
    };
    let described = source.describe();
    let model = options.model.as_deref();
    let wanted = options.min_nodes;
    let settled = source
        .settle(options.timeout, |view| {
            evaluate(view, model, wanted) == CheckOutcome::Healthy
        })
        .await;
    let report = match settled {
        Err(reason) => CheckReport {
            source: described,
            view: None,
            outcome: CheckOutcome::Unreachable(reason.to_string()),
        },
        Ok(view) => {
            let mut outcome = evaluate(&view, model, wanted);
            if let Some(health) = source.node_health().await {
                let problem = match health {
                    Ok(status) if (200..300).contains(&status) => None,
                    Ok(status) => Some(format!("{described}/health answered {status}")),
                    Err(reason) => Some(reason.to_string()),
                };
                if let Some(problem) = problem {
                    outcome = match outcome {
                        CheckOutcome::Healthy => CheckOutcome::Unhealthy(vec![problem]),
                        CheckOutcome::Unhealthy(mut reasons) => {
                            reasons.push(problem);
                            CheckOutcome::Unhealthy(reasons)
                        }
                        unreachable => unreachable,
                    };
                }
            }
            CheckReport {
                source: described,
                view: Some(view),
                outcome,
            }
        }
    };
    source.close().await;
    Ok(report)
}

/// The verdict on a view: the first problem that applies, most basic first.
pub fn evaluate(view: &PeerTableSnapshot, model: Option<&str>, min_nodes: usize) -> CheckOutcome {
    let healthy: Vec<_> = view
        .peers
        .iter()
        .filter(|p| p.heartbeat.status.healthy)
        .collect();
    // Nodes a client could send to: healthy, announcing an endpoint, serving the model.
    let serving = view.nodes(model).len();
    let reason = if view.peers.is_empty() {
        Some("no node sent a heartbeat".to_string())
    } else if healthy.is_empty() {
        Some(format!("all {} nodes are unhealthy", view.peers.len()))
    } else if let Some(model) = model.filter(|_| serving == 0) {
        Some(format!(
            "model `{model}` is not served by any healthy node; models in the swarm: [{}]",
            view.models().join(", ")
        ))
    } else if serving < min_nodes {
        let what = model.map_or(String::new(), |m| format!(" serving `{m}`"));
        Some(format!(
            "{serving} healthy nodes{what}, fewer than the {min_nodes} required"
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => CheckOutcome::Unhealthy(vec![reason]),
        None => CheckOutcome::Healthy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::table::tests::peer_view;

    #[test]
    fn verdicts_name_the_first_problem() {
        let empty = PeerTableSnapshot::default();
        assert_eq!(
            evaluate(&empty, None, 1),
            CheckOutcome::Unhealthy(vec!["no node sent a heartbeat".into()])
        );
        let sick = PeerTableSnapshot {
            peers: vec![peer_view(Some("qwen"), 0, false)],
        };
        assert_eq!(
            evaluate(&sick, Some("qwen"), 1),
            CheckOutcome::Unhealthy(vec!["all 1 nodes are unhealthy".into()])
        );
        let two = PeerTableSnapshot {
            peers: vec![peer_view(Some("qwen"), 0, true), peer_view(None, 0, true)],
        };
        assert_eq!(evaluate(&two, Some("qwen"), 1), CheckOutcome::Healthy);
        assert_eq!(evaluate(&two, None, 2), CheckOutcome::Healthy);
        assert_eq!(
            evaluate(&two, Some("qwen"), 2),
            CheckOutcome::Unhealthy(vec![
                "1 healthy nodes serving `qwen`, fewer than the 2 required".into()
            ])
        );
        assert_eq!(
            evaluate(&two, Some("llama"), 1),
            CheckOutcome::Unhealthy(vec![
                "model `llama` is not served by any healthy node; models in the swarm: [qwen]"
                    .into()
            ])
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(CheckOutcome::Healthy.exit_code(), 0);
        assert_eq!(CheckOutcome::Unhealthy(vec![]).exit_code(), 1);
        assert_eq!(CheckOutcome::Unreachable(String::new()).exit_code(), 2);
    }
}
