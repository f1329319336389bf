//! Failures on purpose, for tests of the watchdog (`serve --test-hooks`, a hidden flag that
//! no chart or example sets): `POST /debug/inject/{failure}` with `engine-crash`,
//! `engine-hang`, `swarm-stop` or `swarm-hang`.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;

use super::AppState;
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
    let engine = state.loaded.get().map(|loaded| &loaded.engine);
    let swarm = state.swarm.get();
    let done = match (failure.as_str(), engine, swarm) {
        ("engine-crash", Some(engine), _) => engine.inject(TestHook::Crash).is_ok(),
        ("engine-hang", Some(engine), _) => engine.inject(TestHook::Hang(HANG)).is_ok(),
        ("swarm-stop", _, Some(swarm)) => {
            swarm.abort();
            true
        }
        ("swarm-hang", _, Some(swarm)) => swarm.inject_hang(HANG).await.is_ok(),
        _ => {
            return (
                StatusCode::NOT_FOUND,
                format!("no failure {failure:?} to inject here"),
            );
        }
    };
    if done {
        (StatusCode::ACCEPTED, format!("{failure} injected"))
    } else {
        (
            StatusCode::CONFLICT,
            format!("{failure} could not be injected"),
        )
    }
}
