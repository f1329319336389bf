//! The operator-facing tools of the `llamanet` binary, as library functions so that they
//! are tested without a process: [`check()`] (a health verdict with an exit code) and
//! [`monitor()`] (a live terminal view, or one snapshot with `--once [--json]`).
//!
//! Both read the swarm through a [`SwarmSource`] ([`source`]): a node's `GET /v1/swarm`
//! (`--url`) or a light swarm peer that joins through `--bootstrap` and only listens. The
//! peer table becomes rows of text in one pure function ([`table::rows`]) that both share.
//!
//! Not here: the swarm (`crate::swarm`), argument parsing beyond each tool's own flags
//! (`main.rs`).
//!
//! # Wiring into `main.rs`
//!
//! ```ignore
//! enum Command {
//!     /// A live view of the swarm.
//!     Monitor(llamanet_node::tools::MonitorOptions),
//!     /// A quick health check: exit 0 healthy, 1 unhealthy, 2 unreachable.
//!     Check(llamanet_node::tools::CheckOptions),
//!     // ...
//! }
//!
//! // in main():
//! Command::Monitor(options) => runtime()?.block_on(llamanet_node::tools::monitor(options)),
//! Command::Check(options) => {
//!     let outcome = runtime()?.block_on(llamanet_node::tools::check(options))?;
//!     return ExitCode::from(outcome.exit_code() as u8);
//! }
//! ```

pub mod check;
pub mod monitor;
pub mod source;
pub mod table;

use std::time::Duration;

pub use crate::swarm::{PeerSnapshot, PeerTableSnapshot};
pub use check::{CheckOptions, CheckOutcome, CheckReport, check, evaluate};
pub use monitor::{MonitorOptions, monitor};
pub use source::{SwarmSource, Unreachable};

/// Parses a duration in any unit humantime knows (`2s`, `500ms`, `1m`, `1h30m`), or a bare
/// number of seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, BadDuration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|err| BadDuration {
            text: text.into(),
            reason: err.to_string(),
        });
    }
    humantime::parse_duration(text).map_err(|err| BadDuration {
        text: text.into(),
        reason: err.to_string(),
    })
}

/// A duration flag's value that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a duration: {text:?} ({reason}; e.g. 2s, 500ms, 1m)")]
pub struct BadDuration {
    pub text: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn flags_parse_as_the_binary_declares_them() {
        Cli::command().debug_assert();
        let parsed = Cli::try_parse_from([
            "llamanet",
            "check",
            "--bootstrap",
            "/ip4/127.0.0.1/tcp/4001",
            "--model",
            "qwen",
            "--min-nodes",
            "2",
            "--timeout",
            "500ms",
        ])
        .unwrap()
        .command;
        let Command::Check(options) = parsed else {
            panic!("not check: {parsed:?}")
        };
        assert_eq!(options.min_nodes, 2);
        assert_eq!(options.timeout, Duration::from_millis(500));
        assert!(options.bootstrap.is_some() && options.url.is_none());
        let both = [
            "llamanet",
            "check",
            "--url",
            "http://a",
            "--bootstrap",
            "/ip4/1.2.3.4/tcp/1",
        ];
        assert!(Cli::try_parse_from(both).is_err());
        let Command::Monitor(options) = Cli::try_parse_from([
            "llamanet", "monitor", "--url", "http://a", "--once", "--json",
        ])
        .unwrap()
        .command
        else {
            panic!("not monitor")
        };
        assert!(options.once && options.json);
        assert_eq!(options.refresh, Duration::from_secs(1));
        assert!(Cli::try_parse_from(["llamanet", "monitor", "--json"]).is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(" 250us "), Ok(Duration::from_micros(250)));
        for bad in ["fast", "", "-1", "2 parsecs", "1e400"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.to_string().contains(bad.trim()), "{bad:?}: {err}");
        }
    }
}
