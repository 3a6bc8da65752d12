//! CRUD handlers for users.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use crate::error::{ApiError, ApiResult};
use crate::models::{ListQuery, NewUser, Page, User, UserPatch};
use crate::state::AppState;

pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Json<Page<User>> {
    let store = state.store.read().await;
    let users: Vec<User> = store.users.values().cloned().collect();
    Json(query.paginate(&users))
}

pub async fn fetch(State(state): State<AppState>, Path(id): Path<u64>) -> ApiResult<Json<User>> {
    let store = state.store.read().await;
    store
        .users
        .get(&id)
        .cloned()
        .map(Json)
        .ok_or(ApiError::NotFound { kind: "user", id })
}

pub async fn create(
    State(state): State<AppState>,
    Json(new): Json<NewUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    new.validate()?;
    let mut store = state.store.write().await;
    if store.users.values().any(|u| u.email == new.email) {
        return Err(ApiError::Conflict(format!(
            "a user with email {} already exists",
            new.email
        )));
    }
    let id = store.next_id();
    let user = User {
        id,
        name: new.name,
        email: new.email,
        admin: new.admin,
    };
    store.users.insert(id, user.clone());
    tracing::info!(id, "user created");
    Ok((StatusCode::CREATED, Json(user)))
}

pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    Json(patch): Json<UserPatch>,
) -> ApiResult<Json<User>> {
    let mut store = state.store.write().await;
    let user = store
        .users
        .get_mut(&id)
        .ok_or(ApiError::NotFound { kind: "user", id })?;
    patch.apply(user)?;
    Ok(Json(user.clone()))
}

pub async fn remove(State(state): State<AppState>, Path(id): Path<u64>) -> ApiResult<StatusCode> {
    let mut store = state.store.write().await;
    if store.users.remove(&id).is_none() {
        return Err(ApiError::NotFound { kind: "user", id });
    }
    store.items.retain(|_, item| item.owner_id != id);
    tracing::info!(id, "user deleted with their items");
    Ok(StatusCode::NO_CONTENT)
}
