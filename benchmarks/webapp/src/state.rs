//! Shared application state: an in-memory store behind a lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::RwLock;

use crate::models::{Item, User};

#[derive(Debug, Default)]
pub struct Store {
    pub users: BTreeMap<u64, User>,
    pub items: BTreeMap<u64, Item>,
    next_id: u64,
}

impl Store {
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<RwLock<Store>>,
    pub started: Instant,
}

impl AppState {
    pub fn new() -> Self {
        AppState {
            store: Arc::new(RwLock::new(Store::default())),
            started: Instant::now(),
        }
    }

    pub fn with_seed_data() -> Self {
        let mut store = Store::default();
        for (name, email) in [("Ada", "ada@example.com"), ("Linus", "linus@example.com")] {
            let id = store.next_id();
            store.users.insert(
                id,
                User {
                    id,
                    name: name.to_string(),
                    email: email.to_string(),
                    admin: id == 1,
                },
            );
        }
        let id = store.next_id();
        store.items.insert(
            id,
            Item {
                id,
                owner_id: 1,
                title: "Mechanical keyboard".to_string(),
                price_cents: 12_900,
                tags: vec!["hardware".to_string()],
            },
        );
        AppState {
            store: Arc::new(RwLock::new(store)),
            started: Instant::now(),
        }
    }
}

impl Default for AppState {
    fn default() -> Self {
        Self::new()
    }
}
