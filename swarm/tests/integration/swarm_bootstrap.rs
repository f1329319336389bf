//! Bootstrap over loopback: an address nobody answers yet is logged clearly and retried with
//! backoff until a node appears there; addresses without `/p2p/<id>` learn the id from the
//! connection; `/dns4` names resolve.

use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use llamanet_swarm::testing::*;
use llamanet_swarm::{self as swarm, PeerEvent, SwarmConfig};

/// Everything logged in this test binary, to check what an operator would read.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("llamanet_node=debug,llamanet_swarm=debug")
            .with_writer(move || LogSink(sink.clone()))
            .init();
        logs
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        // Also to the test's own output, shown when it fails.
        print!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A loopback port nothing listens on (bound once by the OS, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_bootstrap_is_logged_retried_and_joins_when_the_peer_appears() {
    let logs = captured_logs();
    bounded(Duration::from_secs(30), async {
        let port = free_port();
        // No /p2p/<id>: the joiner cannot know who will be there.
        let target: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let joiner = start_node(vec![target.clone()], Some("model-0")).await;
        let mut events = joiner.subscribe();

        // At least two failed attempts, the second later than the first by the backoff.
        let mut failures = Vec::new();
        while failures.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
                Ok(Ok(PeerEvent::BootstrapFailed { addr, retry_in, .. })) => {
                    assert_eq!(addr, target);
                    failures.push(retry_in);
                }
                Ok(_) => {}
                Err(_) => panic!("no bootstrap failure reported"),
            }
        }
        assert!(failures[1] > failures[0], "backoff grows: {failures:?}");
        assert!(joiner.metrics().snapshot().bootstrap_failures >= 2);
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        let warning = text
            .lines()
            .find(|l| l.contains("WARN") && l.contains(&target.to_string()))
            .unwrap_or_else(|| panic!("no warning naming {target} in:\n{text}"));
        assert!(warning.contains("bootstrap peer unreachable"), "{warning}");
        assert!(warning.contains("error="), "the cause is logged: {warning}");
        assert!(warning.contains("retry_in="), "{warning}");

        // Now someone listens there.
        let seed = swarm::start(
            swarm::identity::ephemeral(),
            SwarmConfig {
                listen: vec![target.clone()],
                initial_status: status(None),
                ..node_config(Vec::new())
            },
        )
        .await
        .unwrap();
        let appeared = Instant::now();
        let joined = wait_until(
            "the joiner to reach the late seed",
            Duration::from_secs(5),
            || {
                joiner.heartbeat_of(&seed.peer_id()).is_some()
                    && seed.heartbeat_of(&joiner.peer_id()).is_some()
            },
        )
        .await;
        println!(
            "bootstrap: {} failures before the seed appeared, joined {joined:?} after it did",
            joiner.metrics().snapshot().bootstrap_failures
        );
        assert!(appeared.elapsed() < Duration::from_secs(5));
        joiner.shutdown().await;
        seed.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_bootstrap_address_with_peer_id_joins() {
    let _logs = captured_logs();
    bounded(Duration::from_secs(20), async {
        let seed = start_node(Vec::new(), None).await;
        let port = seed
            .listen_addrs()
            .iter()
            .find_map(|a| {
                a.iter().find_map(|p| match p {
                    libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                    _ => None,
                })
            })
            .unwrap();
        let by_name: Multiaddr = format!("/dns4/localhost/tcp/{port}/p2p/{}", seed.peer_id())
            .parse()
            .unwrap();
        let joiner = start_node(vec![by_name], Some("model-0")).await;
        wait_until("a join through a DNS name", Duration::from_secs(5), || {
            seed.heartbeat_of(&joiner.peer_id()).is_some()
        })
        .await;
        joiner.shutdown().await;
        seed.shutdown().await;
    })
    .await;
}

/// Connected peers of `node` (the swarm task's own view).
async fn connected(node: &swarm::SwarmHandle) -> Vec<libp2p::PeerId> {
    node.connected_peers().await.unwrap_or_default()
}

/// A bootstrap peer is a meeting point (the operator in a cluster): when it restarts, nodes
/// dial it again even though they still have each other, so it hears them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_bootstrap_peer_is_dialed_again_while_other_peers_remain() {
    // This binary's one subscriber (the other tests read what it captures).
    let _ = captured_logs();
    bounded(Duration::from_secs(60), async {
        let port = free_port();
        let target: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let key = swarm::identity::ephemeral();
        let seed_config = || SwarmConfig {
            listen: vec![target.clone()],
            initial_status: status(None),
            ..node_config(Vec::new())
        };
        let seed = swarm::start(key.clone(), seed_config()).await.unwrap();
        let a = start_node(vec![target.clone()], Some("model-a")).await;
        let b = start_node(vec![target.clone()], Some("model-b")).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !connected(&a).await.contains(&b.peer_id()) {
            assert!(
                Instant::now() < deadline,
                "a and b never connected directly"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The seed crashes: its connections drop, a and b keep each other.
        let seed_id = seed.peer_id();
        seed.abort();
        let deadline = Instant::now() + Duration::from_secs(10);
        while connected(&a).await.contains(&seed_id) {
            assert!(Instant::now() < deadline, "a still sees the dead seed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            connected(&a).await.contains(&b.peer_id()),
            "a is not isolated"
        );

        // Back at the same address: both nodes find their way to it again.
        let back = Instant::now();
        let seed = swarm::start(key, seed_config()).await.unwrap();
        wait_until(
            "the restarted seed to hear both nodes",
            Duration::from_secs(15),
            || {
                seed.heartbeat_of(&a.peer_id()).is_some()
                    && seed.heartbeat_of(&b.peer_id()).is_some()
            },
        )
        .await;
        println!(
            "restarted bootstrap peer heard both nodes after {:?}",
            back.elapsed()
        );
        for node in [a, b, seed] {
            node.shutdown().await;
        }
    })
    .await;
}
