//! Helpers for tests that drive a [`Cluster`]: waiting for a condition with a deadline, and
//! `kubectl` with input and a clear failure message.

use std::future::Future;
use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::Cluster;

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Cluster {
    /// Runs `kubectl args...` against this cluster with `stdin` as its input.
    pub fn kubectl_run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = self
            .kubectl()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        let mut input = child.stdin.take().expect("piped stdin");
        if let Some(text) = stdin {
            input
                .write_all(text.as_bytes())
                .expect("kubectl reads its input");
        }
        drop(input);
        child.wait_with_output().expect("kubectl finishes")
    }

    /// Like [`Cluster::kubectl_run`], but panics with kubectl's stderr unless it succeeds;
    /// returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_run(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("kubectl prints UTF-8")
    }
}
