//! Liveness and version endpoints.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use crate::state::AppState;

#[derive(Serialize, Debug, Clone)]
pub struct Health {
    status: &'static str,
    uptime_s: u64,
    users: usize,
    items: usize,
}

pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let store = state.store.read().await;
    Json(Health {
        status: "ok",
        uptime_s: state.started.elapsed().as_secs(),
        users: store.users.len(),
        items: store.items.len(),
    })
}

pub async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}
