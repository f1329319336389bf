//! `llamanet monitor`: a live terminal view of the swarm (ratatui), refreshed every second,
//! from a light swarm peer (`--bootstrap`) or a node's `/v1/swarm` (`--url`). `--once`
//! prints one snapshot and exits, as JSON with `--json`; that path never touches the
//! terminal, so scripts and pipes can use it.

use std::time::Duration;

use libp2p::Multiaddr;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Table};
use ratatui::{DefaultTerminal, Frame};
use tokio::sync::mpsc;

use super::source::{SwarmSource, Unreachable};
use super::table::{self, COLUMNS};
use crate::swarm::PeerTableSnapshot;

/// How to watch.
#[derive(Debug, Clone, clap::Args)]
pub struct MonitorOptions {
    /// Join the swarm through this peer (a light, listen-only peer).
    #[arg(long, conflicts_with = "url")]
    pub bootstrap: Option<Multiaddr>,
    /// Or poll this node's HTTP API (`GET /v1/swarm`).
    #[arg(long)]
    pub url: Option<String>,
    /// Bearer key for `--url` nodes that require one.
    #[arg(long, env = "LLAMANET_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Pre-shared key file of a private swarm, for `--bootstrap` (a Kubernetes swarm is
    /// private: the chart's `<release>-swarm-key` Secret).
    #[arg(long, env = "LLAMANET_SWARM_KEY")]
    pub swarm_key: Option<std::path::PathBuf>,
    /// Print one snapshot and exit.
    #[arg(long)]
    pub once: bool,
    /// With `--once`: the snapshot as JSON (the shape of `GET /v1/swarm`).
    #[arg(long, requires = "once")]
    pub json: bool,
    /// Refresh period of the live view (e.g. `1s`).
    #[arg(long, default_value = "1s", value_parser = super::parse_duration)]
    pub refresh: Duration,
    /// Longest wait for heartbeats (and for each HTTP request).
    #[arg(long, default_value = "3s", value_parser = super::parse_duration)]
    pub timeout: Duration,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions {
            bootstrap: None,
            url: None,
            api_key: None,
            swarm_key: None,
            once: false,
            json: false,
            refresh: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        }
    }
}

/// Runs the monitor until the user quits (`q`, Esc, Ctrl-C), or prints one snapshot with
/// `--once`.
pub async fn monitor(options: MonitorOptions) -> anyhow::Result<()> {
    let source = SwarmSource::open(
        options.bootstrap.as_ref(),
        options.url.as_deref(),
        options.api_key.as_deref(),
        options.swarm_key.as_deref(),
        options.timeout,
    )
    .await?;
    let result = if options.once {
        snapshot(&source, options.timeout)
            .await
            .map(|view| print!("{}", render_once(&view, options.json)))
    } else {
        live(&source, options.refresh).await
    };
    source.close().await;
    result
}

/// One settled view of the swarm, or why it is unreachable.
pub async fn snapshot(source: &SwarmSource, wait: Duration) -> anyhow::Result<PeerTableSnapshot> {
    source
        .settle(wait, |_| false)
        .await
        .map_err(|reason| anyhow::anyhow!("unreachable: {reason}"))
}

/// What `--once` prints: JSON, or the full table and a summary line.
pub fn render_once(view: &PeerTableSnapshot, json: bool) -> String {
    if json {
        let mut text = serde_json::to_string_pretty(view).expect("views always serialize");
        text.push('\n');
        return text;
    }
    let all: Vec<usize> = (0..COLUMNS.len()).collect();
    format!(
        "{}{}\n",
        table::render_text(&table::rows(view), &all),
        table::summary(view)
    )
}

async fn live(source: &SwarmSource, refresh: Duration) -> anyhow::Result<()> {
    let keys = key_reader();
    let mut terminal = ratatui::init();
    let result = draw_loop(&mut terminal, source, refresh, keys).await;
    ratatui::restore();
    result
}

/// Whether the user asked to quit.
type Quit = bool;

/// Reads keys on a thread of its own (crossterm's reads block) until the receiver is gone.
fn key_reader() -> mpsc::Receiver<Quit> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        while !tx.is_closed() {
            // Polling with a timeout lets the thread notice that the monitor stopped.
            if !event::poll(Duration::from_millis(200)).unwrap_or(false) {
                continue;
            }
            if let Ok(Event::Key(key)) = event::read()
                && key.kind == KeyEventKind::Press
            {
                let quit = matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
                    || (key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL));
                if tx.blocking_send(quit).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

async fn draw_loop(
    terminal: &mut DefaultTerminal,
    source: &SwarmSource,
    refresh: Duration,
    mut keys: mpsc::Receiver<Quit>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(refresh);
    let title = source.describe();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let view = source.view().await;
                terminal.draw(|frame| draw(frame, &title, &view))?;
            }
            key = keys.recv() => {
                if key.is_none_or(|quit| quit) {
                    return Ok(());
                }
            }
        }
    }
}

/// One frame: a summary line, the peer table, a help line.
pub fn draw(frame: &mut Frame, title: &str, view: &Result<PeerTableSnapshot, Unreachable>) {
    let [top, middle, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let (headline, rows) = match view {
        Ok(view) => (table::summary(view), table::rows(view)),
        Err(reason) => (format!("unreachable: {reason}"), Vec::new()),
    };
    frame.render_widget(Paragraph::new(Line::from(headline)), top);
    let widths: Vec<Constraint> = (0..COLUMNS.len())
        .map(|c| {
            let widest = rows
                .iter()
                .map(|r| r.0[c].chars().count())
                .chain([COLUMNS[c].len()])
                .max()
                .unwrap_or(0);
            Constraint::Length(widest as u16)
        })
        .collect();
    let table = Table::new(
        rows.into_iter()
            .map(|r| ratatui::widgets::Row::new(r.0.to_vec())),
        widths,
    )
    .header(
        ratatui::widgets::Row::new(COLUMNS.to_vec())
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .column_spacing(2)
    .block(
        Block::default()
            .borders(Borders::TOP)
            .title(title.to_string()),
    );
    frame.render_widget(table, middle);
    frame.render_widget(Paragraph::new("q: quit"), bottom);
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::tools::table::tests::peer_view;

    fn screen(view: &Result<PeerTableSnapshot, Unreachable>) -> String {
        let mut terminal = Terminal::new(TestBackend::new(140, 8)).unwrap();
        terminal.draw(|f| draw(f, "test", view)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        buffer
            .content()
            .chunks(140)
            .map(|line| line.iter().map(|c| c.symbol()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_frame_shows_summary_header_and_one_line_per_peer() {
        let view = PeerTableSnapshot {
            peers: vec![peer_view(Some("qwen"), 1, true), peer_view(None, 0, true)],
        };
        let text = screen(&Ok(view.clone()));
        assert!(text.contains("2 nodes (2 healthy)"), "{text}");
        assert!(text.contains("PEER") && text.contains("TTFT"), "{text}");
        let short = table::short_peer(&view.peers[0].heartbeat.peer_id.to_string());
        assert!(text.contains(&short), "{text}");
        assert!(text.contains("(router)"), "{text}");
        let refused = Unreachable::Request {
            url: "http://x/v1/swarm".into(),
            reason: "refused".into(),
        };
        assert!(screen(&Err(refused)).contains("unreachable: GET http://x/v1/swarm: refused"));
    }

    #[test]
    fn once_json_is_the_swarm_endpoint_shape_and_reads_back() {
        let view = PeerTableSnapshot {
            peers: vec![peer_view(Some("qwen"), 1, true)],
        };
        let json = render_once(&view, true);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["peers"][0]["models"][0]["id"], "qwen");
        assert_eq!(value["peers"][0]["age_ms"], 1500);
        assert_eq!(
            serde_json::from_str::<PeerTableSnapshot>(&json).unwrap(),
            view
        );
        let text = render_once(&view, false);
        assert!(text.starts_with("PEER") && text.contains("1 nodes (1 healthy)"));
    }
}
