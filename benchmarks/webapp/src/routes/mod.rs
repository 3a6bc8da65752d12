//! The HTTP routes, one module per resource.

mod health;
mod items;
mod users;

use axum::Router;
use axum::routing::get;

use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/version", get(health::version))
        .route("/users", get(users::list).post(users::create))
        .route(
            "/users/{id}",
            get(users::fetch).patch(users::update).delete(users::remove),
        )
        .route("/users/{id}/items", get(items::list_for_user))
        .route("/items", get(items::list).post(items::create))
        .route("/items/{id}", get(items::fetch).delete(items::remove))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::router;
    use crate::state::AppState;

    async fn get_json(uri: &str) -> (StatusCode, serde_json::Value) {
        let app = router(AppState::with_seed_data());
        let response = app
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn health_is_ok() {
        let (status, body) = get_json("/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok");
    }

    #[tokio::test]
    async fn missing_user_is_404() {
        let (status, body) = get_json("/users/999").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "not_found");
    }
}
