//! rbd-webapp: a small JSON API in the style of a typical axum service.
//! It is a reference project for rbd's benchmarks; nothing here talks to a
//! database, the state lives in memory.

mod error;
mod models;
mod routes;
mod state;

use std::net::SocketAddr;

use tower_http::cors::CorsLayer;
use tower_http::trace::TraceLayer;
use tracing_subscriber::EnvFilter;

use crate::state::AppState;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let state = AppState::with_seed_data();
    let app = routes::router(state)
        .layer(TraceLayer::new_for_http())
        .layer(CorsLayer::permissive());

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(%addr, %err, "cannot bind");
            std::process::exit(1);
        }
    };
    tracing::info!(%addr, "rbd-webapp listening");
    if let Err(err) = axum::serve(listener, app).await {
        tracing::error!(%err, "server stopped");
    }
}
