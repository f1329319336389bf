//! Failures on purpose, for tests of the watchdog (`serve --test-hooks`, a hidden flag that
//! no chart or example sets): `POST /debug/inject/{failure}` with `engine-crash`,
//! `engine-hang`, `swarm-stop` or `swarm-hang`.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;

use super::AppState;
#[cfg(feature = "engine")]
use crate::engine::TestHook;

/// Long enough that only the watchdog ends it.
const HANG: Duration = Duration::from_secs(3600);

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/debug/inject/{failure}", post(inject))
        .with_state(state)
}

async fn inject(
    State(state): State<AppState>,
    Path(failure): Path<String>,
) -> (StatusCode, String) {
    let swarm = state.swarm.get();
    // `None`: nothing here to break that way.
    let done = match failure.as_str() {
        #[cfg(feature = "engine")]
        "engine-crash" => state
            .loaded()
            .map(|loaded| loaded.engine.inject(TestHook::Crash).is_ok()),
        #[cfg(feature = "engine")]
        "engine-hang" => state
            .loaded()
            .map(|loaded| loaded.engine.inject(TestHook::Hang(HANG)).is_ok()),
        "swarm-stop" => swarm.map(|swarm| {
            swarm.abort();
            true
        }),
        "swarm-hang" => match swarm {
            Some(swarm) => Some(swarm.inject_hang(HANG).await.is_ok()),
            None => None,
        },
        _ => None,
    };
    match done {
        None => (
            StatusCode::NOT_FOUND,
            format!("no failure {failure:?} to inject here"),
        ),
        Some(true) => (StatusCode::ACCEPTED, format!("{failure} injected")),
        Some(false) => (
            StatusCode::CONFLICT,
            format!("{failure} could not be injected"),
        ),
    }
}
