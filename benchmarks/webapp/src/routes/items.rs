//! Handlers for items, which belong to a user.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use crate::error::{ApiError, ApiResult};
use crate::models::{Item, ListQuery, NewItem, Page};
use crate::state::AppState;

fn matches_tag(item: &Item, tag: Option<&str>) -> bool {
    tag.is_none_or(|t| item.tags.iter().any(|have| have == t))
}

pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Json<Page<Item>> {
    let store = state.store.read().await;
    let items: Vec<Item> = store
        .items
        .values()
        .filter(|item| matches_tag(item, query.tag.as_deref()))
        .cloned()
        .collect();
    Json(query.paginate(&items))
}

pub async fn list_for_user(
    State(state): State<AppState>,
    Path(user_id): Path<u64>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Page<Item>>> {
    let store = state.store.read().await;
    if !store.users.contains_key(&user_id) {
        return Err(ApiError::NotFound {
            kind: "user",
            id: user_id,
        });
    }
    let items: Vec<Item> = store
        .items
        .values()
        .filter(|item| item.owner_id == user_id && matches_tag(item, query.tag.as_deref()))
        .cloned()
        .collect();
    Ok(Json(query.paginate(&items)))
}

pub async fn fetch(State(state): State<AppState>, Path(id): Path<u64>) -> ApiResult<Json<Item>> {
    let store = state.store.read().await;
    store
        .items
        .get(&id)
        .cloned()
        .map(Json)
        .ok_or(ApiError::NotFound { kind: "item", id })
}

pub async fn create(
    State(state): State<AppState>,
    Json(new): Json<NewItem>,
) -> ApiResult<(StatusCode, Json<Item>)> {
    new.validate()?;
    let mut store = state.store.write().await;
    if !store.users.contains_key(&new.owner_id) {
        return Err(ApiError::Validation(format!(
            "owner {} does not exist",
            new.owner_id
        )));
    }
    let id = store.next_id();
    let item = Item {
        id,
        owner_id: new.owner_id,
        title: new.title,
        price_cents: new.price_cents,
        tags: new.tags,
    };
    store.items.insert(id, item.clone());
    tracing::info!(id, owner = item.owner_id, "item created");
    Ok((StatusCode::CREATED, Json(item)))
}

pub async fn remove(State(state): State<AppState>, Path(id): Path<u64>) -> ApiResult<StatusCode> {
    let mut store = state.store.write().await;
    match store.items.remove(&id) {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(ApiError::NotFound { kind: "item", id }),
    }
}
