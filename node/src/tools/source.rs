//! Where the tools read the swarm from: a node's `GET /v1/swarm` (`--url`), or a light swarm
//! peer of their own that joins through `--bootstrap` and listens to heartbeats. Both give
//! a [`PeerTableSnapshot`], the JSON shape of `/v1/swarm`.

use std::time::{Duration, Instant};

use libp2p::Multiaddr;

use crate::route::relay::describe_http as describe;
use crate::swarm::{self, PeerTableSnapshot, SwarmConfig, SwarmHandle};

/// Why a source could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreachable {
    #[error("GET {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("GET {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: not a peer table: {reason}")]
    NotAPeerTable { url: String, reason: String },
    #[error("no swarm peer answered at {0}")]
    NoPeer(Multiaddr),
}

/// A source of [`PeerTableSnapshot`]s.
#[derive(Debug)]
pub enum SwarmSource {
    /// A node's HTTP API.
    Url {
        client: reqwest::Client,
        base: String,
    },
    /// A light swarm peer of our own.
    Peer {
        handle: SwarmHandle,
        bootstrap: Multiaddr,
    },
}

impl SwarmSource {
    /// Opens the one source given. `timeout` bounds each HTTP request.
    /// `api_key` goes with `--url` requests, for nodes that require one.
    pub async fn open(
        bootstrap: Option<&Multiaddr>,
        url: Option<&str>,
        api_key: Option<&str>,
        swarm_key: Option<&std::path::Path>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        match (bootstrap, url) {
            (Some(_), Some(_)) => anyhow::bail!("give either --bootstrap or --url, not both"),
            (None, None) => anyhow::bail!("give --bootstrap ADDR or --url URL"),
            (None, Some(url)) => Ok(SwarmSource::Url {
                client: reqwest::Client::builder()
                    .timeout(timeout)
                    .no_proxy()
                    .default_headers(auth_header(api_key)?)
                    .build()?,
                base: url.trim_end_matches('/').to_string(),
            }),
            (Some(addr), None) => {
                let psk = swarm_key.map(swarm::load_psk).transpose()?;
                let config = SwarmConfig {
                    psk,
                    // Retry a refused dial quickly: a tool has only seconds to get an answer.
                    bootstrap_backoff: swarm::Backoff {
                        initial: Duration::from_millis(200),
                        max: Duration::from_secs(2),
                    },
                    ..SwarmConfig::light(vec![addr.clone()])
                };
                let handle = swarm::start(swarm::identity::ephemeral(), config).await?;
                Ok(SwarmSource::Peer {
                    handle,
                    bootstrap: addr.clone(),
                })
            }
        }
    }

    /// What the source says now.
    pub async fn view(&self) -> Result<PeerTableSnapshot, Unreachable> {
        match self {
            SwarmSource::Url { client, base } => {
                let url = format!("{base}/v1/swarm");
                let response =
                    client
                        .get(&url)
                        .send()
                        .await
                        .map_err(|err| Unreachable::Request {
                            url: url.clone(),
                            reason: describe(&err),
                        })?;
                if !response.status().is_success() {
                    return Err(Unreachable::Status {
                        url,
                        status: response.status().as_u16(),
                    });
                }
                response
                    .json()
                    .await
                    .map_err(|err| Unreachable::NotAPeerTable {
                        url,
                        reason: err.to_string(),
                    })
            }
            SwarmSource::Peer { handle, bootstrap } => {
                let view = handle.snapshot();
                if view.peers.is_empty()
                    && handle
                        .connected_peers()
                        .await
                        .unwrap_or_default()
                        .is_empty()
                {
                    return Err(Unreachable::NoPeer(bootstrap.clone()));
                }
                Ok(view)
            }
        }
    }

    /// A view worth reporting. Over HTTP that is the first answer. A fresh peer of our own
    /// starts empty, so it waits for heartbeats: until `done` holds, or every peer heard has
    /// had one heartbeat interval to speak, or `max` passed.
    pub async fn settle(
        &self,
        max: Duration,
        mut done: impl FnMut(&PeerTableSnapshot) -> bool,
    ) -> Result<PeerTableSnapshot, Unreachable> {
        if let SwarmSource::Url { .. } = self {
            return self.view().await;
        }
        let start = Instant::now();
        let mut first_heard: Option<Instant> = None;
        loop {
            let view = match self {
                SwarmSource::Peer { handle, .. } => handle.snapshot(),
                SwarmSource::Url { .. } => unreachable!("answered above"),
            };
            if !view.peers.is_empty() {
                let heard = *first_heard.get_or_insert_with(Instant::now);
                // The peers that answered our subscription at once are in; the others
                // speak within their interval.
                let everyone = heard.elapsed() >= view.longest_interval();
                if done(&view) || everyone {
                    return Ok(view);
                }
            }
            if start.elapsed() >= max {
                return self.view().await;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `GET /health` of a `--url` node: `None` for a swarm peer source, else the status or
    /// why it failed.
    pub async fn node_health(&self) -> Option<Result<u16, Unreachable>> {
        let SwarmSource::Url { client, base } = self else {
            return None;
        };
        let url = format!("{base}/health");
        Some(
            client
                .get(&url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|err| Unreachable::Request {
                    reason: describe(&err),
                    url,
                }),
        )
    }

    /// Leaves the swarm politely (bounded: a tool must exit promptly).
    pub async fn close(self) {
        if let SwarmSource::Peer { handle, .. } = self {
            let _ = tokio::time::timeout(Duration::from_millis(500), handle.shutdown()).await;
        }
    }

    /// What the source is, for headers.
    pub fn describe(&self) -> String {
        match self {
            SwarmSource::Url { base, .. } => base.clone(),
            SwarmSource::Peer { bootstrap, .. } => format!("swarm via {bootstrap}"),
        }
    }
}

fn auth_header(api_key: Option<&str>) -> anyhow::Result<reqwest::header::HeaderMap> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = api_key.filter(|key| !key.is_empty()) {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| anyhow::anyhow!("the API key holds characters a header cannot carry"))?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(headers)
}
