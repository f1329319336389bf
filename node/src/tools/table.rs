//! The swarm as a table: one pure function from a [`PeerTableSnapshot`] to rows of text, shared by
//! `check` (printed) and `monitor` (drawn with ratatui), so both show the same figures.

use crate::swarm::PeerTableSnapshot;

/// Column headers, in order.
pub const COLUMNS: [&str; 10] = [
    "PEER", "MODELS", "ENDPOINT", "SLOTS", "QUEUE", "TOK/S", "TTFT", "AGE", "CLUSTER", "STATE",
];

/// Columns of the compact table `check` prints: peer, models, endpoint, slots, queue, tok/s,
/// heartbeat age, state.
pub const COMPACT: [usize; 8] = [0, 1, 2, 3, 4, 5, 7, 9];

/// One peer's cells, in [`COLUMNS`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub [String; COLUMNS.len()]);

/// One row per peer, in the view's order (by peer id).
pub fn rows(view: &PeerTableSnapshot) -> Vec<Row> {
    view.peers
        .iter()
        .map(|peer| {
            let hb = &peer.heartbeat;
            let status = &hb.status;
            let models = if status.models.is_empty() {
                "(router)".to_string()
            } else {
                status
                    .models
                    .iter()
                    .map(|m| m.id.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let cluster = match (status.cluster.as_str(), status.zone.as_str()) {
                ("", "") => "-".to_string(),
                (cluster, "") => cluster.to_string(),
                (cluster, zone) => format!("{cluster}/{zone}"),
            };
            Row([
                short_peer(&hb.peer_id.to_string()),
                models,
                status
                    .endpoints
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "-".into()),
                format!("{}/{}", status.slots_busy, status.slots_total),
                status.queue_depth.to_string(),
                format!("{:.1}", status.tokens_per_second),
                if status.ttft_p50_ms > 0.0 {
                    format!("{:.0}ms", status.ttft_p50_ms)
                } else {
                    "-".into()
                },
                format!("{:.1}s", peer.age_ms as f64 / 1000.0),
                cluster,
                if status.healthy { "ok" } else { "unhealthy" }.into(),
            ])
        })
        .collect()
}

/// One line about the whole swarm: nodes, health, models, clusters.
pub fn summary(view: &PeerTableSnapshot) -> String {
    let healthy = view
        .peers
        .iter()
        .filter(|p| p.heartbeat.status.healthy)
        .count();
    let mut clusters: Vec<&str> = view
        .peers
        .iter()
        .map(|p| p.heartbeat.status.cluster.as_str())
        .filter(|c| !c.is_empty())
        .collect();
    clusters.sort();
    clusters.dedup();
    let models = view.models();
    format!(
        "{} nodes ({healthy} healthy), {} models [{}], clusters [{}]",
        view.peers.len(),
        models.len(),
        models.join(", "),
        clusters.join(", ")
    )
}

/// Peer ids all start with the same multihash prefix (`12D3KooW`): the tail tells them
/// apart.
pub fn short_peer(id: &str) -> String {
    let tail: String = id
        .chars()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if tail.len() < id.len() {
        format!("…{tail}")
    } else {
        tail
    }
}

/// Plain text with aligned columns (the `columns` of [`COLUMNS`] given).
pub fn render_text(rows: &[Row], columns: &[usize]) -> String {
    let widths: Vec<usize> = columns
        .iter()
        .map(|&c| {
            rows.iter()
                .map(|r| r.0[c].chars().count())
                .chain([COLUMNS[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut text = line(columns.iter().map(|&c| COLUMNS[c]).collect());
    for row in rows {
        text.push('\n');
        text.push_str(&line(columns.iter().map(|&c| row.0[c].as_str()).collect()));
    }
    text.push('\n');
    text
}

#[cfg(test)]
pub(crate) mod tests {
    use libp2p::PeerId;

    use super::*;
    use crate::swarm::PeerSnapshot;
    use crate::swarm::{Heartbeat, ModelInfo, NodeStatus};

    /// A peer in a view, serving `model` (none: a router).
    pub(crate) fn peer_view(model: Option<&str>, busy: u32, healthy: bool) -> PeerSnapshot {
        PeerSnapshot {
            heartbeat: Heartbeat {
                peer_id: PeerId::random(),
                seq: 3,
                started_at_ms: 0,
                timestamp_ms: 0,
                interval_ms: 2000,
                uptime_s: 6,
                swarm_addrs: Vec::new(),
                status: NodeStatus {
                    endpoints: vec!["http://127.0.0.1:8080".into()],
                    models: model
                        .map(|id| ModelInfo {
                            id: id.into(),
                            context_size: 4096,
                            quantization: "Q4_K_M".into(),
                            fingerprint: String::new(),
                        })
                        .into_iter()
                        .collect(),
                    slots_busy: busy,
                    slots_total: if model.is_some() { 4 } else { 0 },
                    queue_depth: 1,
                    tokens_per_second: 42.5,
                    ttft_p50_ms: 81.4,
                    cluster: "east".into(),
                    zone: "a".into(),
                    healthy,
                    ..NodeStatus::default()
                },
            },
            age_ms: 1500,
            expires_in_ms: 4500,
        }
    }

    #[test]
    fn rows_show_each_figure_of_a_peer() {
        let view = PeerTableSnapshot {
            peers: vec![peer_view(Some("qwen"), 2, true), peer_view(None, 0, false)],
        };
        let rows = rows(&view);
        let id = view.peers[0].heartbeat.peer_id.to_string();
        assert_eq!(
            rows[0].0,
            [
                format!("…{}", &id[id.len() - 8..]),
                "qwen".into(),
                "http://127.0.0.1:8080".into(),
                "2/4".into(),
                "1".into(),
                "42.5".into(),
                "81ms".into(),
                "1.5s".into(),
                "east/a".into(),
                "ok".into(),
            ]
        );
        assert_eq!(rows[1].0[1], "(router)");
        assert_eq!(rows[1].0[9], "unhealthy");
        assert_eq!(
            summary(&view),
            "2 nodes (1 healthy), 1 models [qwen], clusters [east]"
        );
    }

    #[test]
    fn text_table_aligns_the_chosen_columns() {
        let view = PeerTableSnapshot {
            peers: vec![peer_view(Some("a-long-model-name"), 0, true)],
        };
        let text = render_text(&rows(&view), &[1, 3]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "MODELS             SLOTS");
        assert_eq!(lines[1], "a-long-model-name  0/4");
        assert_eq!(short_peer("abc"), "abc");
    }
}
