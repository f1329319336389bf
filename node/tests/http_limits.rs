//! The API's admission limits over a real socket on 127.0.0.1 (a router's API, so no model
//! is needed): a client that stalls while sending its body holds one of the
//! `--max-concurrent-requests` turns until `--body-timeout` ends it with 408; meanwhile one
//! more `/v1` request is refused at once with 503 `overloaded` and Retry-After, while
//! `/health` still answers. Once the stalled request is gone, requests are admitted again.

use std::time::{Duration, Instant};

use llamanet_node::api::{self, ApiConfig, AppState, Local};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_holds_a_turn_until_the_body_timeout_and_extra_requests_are_shed() {
    let state = AppState::with_local(
        ApiConfig {
            model_id: String::new(),
            api_key: None,
            body_limit: 64 * 1024,
            request_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(1),
            max_concurrent_requests: 1,
            started_unix: api::unix_now(),
            hold: Default::default(),
        },
        Local::Router,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, api::router(state)).into_future());
    let base = format!("http://{address}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});

    // A client announces 100 bytes of body and sends 9.
    let mut stalled = tokio::net::TcpStream::connect(address).await.unwrap();
    stalled
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"model\":",
        )
        .await
        .unwrap();
    let stalled_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Its turn is the only one: the next request is shed, probes are not.
    let shed = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: Value = shed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 1 requests"),
        "{body}"
    );
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // The stalled client gets 408 once it paused for the body timeout.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut answer))
        .await
        .expect("the stalled request is answered within 10 s")
        .unwrap();
    let waited = stalled_at.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");
    assert!(answer.contains("stopped arriving for 1 s"), "{answer}");
    assert!(waited >= Duration::from_millis(900), "{waited:?}");

    // Its turn is free again: the same request is admitted (and answered: a router without a
    // swarm has no peer serving the model).
    let admitted = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(admitted.status(), 404);
    let body: Value = admitted.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found", "{body}");
}
