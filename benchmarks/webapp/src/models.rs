//! Data types exchanged over the API.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub email: String,
    #[serde(default)]
    pub admin: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct NewUser {
    pub name: String,
    pub email: String,
    #[serde(default)]
    pub admin: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct UserPatch {
    pub name: Option<String>,
    pub email: Option<String>,
    pub admin: Option<bool>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Item {
    pub id: u64,
    pub owner_id: u64,
    pub title: String,
    pub price_cents: u64,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct NewItem {
    pub owner_id: u64,
    pub title: String,
    pub price_cents: u64,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ListQuery {
    pub offset: Option<usize>,
    pub limit: Option<usize>,
    pub tag: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Page<T> {
    pub total: usize,
    pub offset: usize,
    pub items: Vec<T>,
}

impl NewUser {
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.name.trim().is_empty() {
            return Err(ApiError::Validation("name must not be empty".into()));
        }
        validate_email(&self.email)
    }
}

impl UserPatch {
    pub fn apply(self, user: &mut User) -> Result<(), ApiError> {
        if let Some(name) = self.name {
            if name.trim().is_empty() {
                return Err(ApiError::Validation("name must not be empty".into()));
            }
            user.name = name;
        }
        if let Some(email) = self.email {
            validate_email(&email)?;
            user.email = email;
        }
        if let Some(admin) = self.admin {
            user.admin = admin;
        }
        Ok(())
    }
}

impl NewItem {
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.title.trim().is_empty() {
            return Err(ApiError::Validation("title must not be empty".into()));
        }
        if self.tags.len() > 8 {
            return Err(ApiError::Validation("at most 8 tags".into()));
        }
        Ok(())
    }
}

impl ListQuery {
    pub const MAX_LIMIT: usize = 100;

    pub fn paginate<T: Clone>(&self, all: &[T]) -> Page<T> {
        let offset = self.offset.unwrap_or(0).min(all.len());
        let limit = self.limit.unwrap_or(20).min(Self::MAX_LIMIT);
        Page {
            total: all.len(),
            offset,
            items: all[offset..].iter().take(limit).cloned().collect(),
        }
    }
}

fn validate_email(email: &str) -> Result<(), ApiError> {
    match email.split_once('@') {
        Some((local, domain)) if !local.is_empty() && domain.contains('.') => Ok(()),
        _ => Err(ApiError::Validation(format!(
            "not an email address: {email:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_email() {
        let user = NewUser {
            name: "Ann".into(),
            email: "ann.example.com".into(),
            admin: false,
        };
        assert!(user.validate().is_err());
    }

    #[test]
    fn paginates_within_bounds() {
        let q = ListQuery {
            offset: Some(3),
            limit: Some(5),
            tag: None,
        };
        let page = q.paginate(&(0..6).collect::<Vec<u32>>());
        assert_eq!(page.total, 6);
        assert_eq!(page.items, vec![3, 4, 5]);
    }

    #[test]
    fn item_roundtrips_through_json() {
        let item = Item {
            id: 1,
            owner_id: 2,
            title: "lamp".into(),
            price_cents: 1999,
            tags: vec!["home".into()],
        };
        let text = serde_json::to_string(&item).unwrap();
        let back: Item = serde_json::from_str(&text).unwrap();
        assert_eq!(back, item);
    }
}
