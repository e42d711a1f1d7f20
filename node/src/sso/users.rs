//! Users as an administrator manages them: created with a hashed password,
//! changed, disabled and enabled. A change that ends the user's sessions (a
//! new password, a disabled account) tells their sites over the back channel.

use baa_proto::api::{CreateUserRequest, ListQuery, UpdateUserRequest, UserList, UserView};
use baa_proto::command::{ApplyError, NewUser, Op, Outcome, RequestId, UserPatch};
use baa_proto::model;
use baa_proto::ErrorCode;

use crate::actors::hasher::Hashers;
use crate::agency::Agency;
use crate::error::{NodeError, Result};
use crate::sso::page::{self, Page};

fn user_of(outcome: Outcome) -> Result<UserView> {
    match outcome {
        Outcome::User(u) => Ok(UserView::from(&u)),
        other => Err(NodeError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

async fn hash(hasher: &Hashers, password: String) -> Result<String> {
    if password.len() < 8 || password.len() > 1024 {
        return Err(NodeError::invalid(
            "a password must be 8 to 1024 bytes long",
        ));
    }
    hasher
        .hash(password)
        .await
        .map_err(|_| NodeError::Busy)?
        .map_err(NodeError::Internal)
}

fn check<T>(r: std::result::Result<T, model::ValidationError>) -> Result<T> {
    r.map_err(|e| NodeError::invalid(e.0))
}

/// Creates a user.
pub async fn create(
    agency: &Agency,
    hasher: &Hashers,
    req: CreateUserRequest,
    request_id: Option<RequestId>,
) -> Result<UserView> {
    check(model::validate_username(&req.username))?;
    let display_name = req.display_name.unwrap_or_else(|| req.username.clone());
    check(model::validate_text("display_name", &display_name))?;
    let email = req.email.filter(|e| !e.is_empty());
    if let Some(e) = &email {
        check(model::validate_text("email", e))?;
    }
    check(model::validate_groups(&req.groups))?;
    for (k, v) in &req.attributes {
        check(model::validate_attribute(k, Some(v)))?;
    }
    let password_hash = match req.password {
        Some(p) => Some(hash(hasher, p).await?),
        None => None,
    };
    let new = NewUser {
        username: req.username,
        display_name,
        email,
        groups: req.groups,
        attributes: req.attributes,
        password_hash,
    };
    user_of(agency.write(Op::CreateUser(new), request_id).await?)
}

/// The user named `name`.
pub fn get(agency: &Agency, name: &str) -> Result<UserView> {
    match agency.state.user(name)? {
        Some(u) => Ok(UserView::from(&u)),
        None => {
            Err(ApplyError::new(ErrorCode::UserNotFound, format!("no user named {name}")).into())
        }
    }
}

/// One page of users, in username order (see `sso::page`).
pub fn list(agency: &Agency, query: &ListQuery) -> Result<UserList> {
    let page = Page::parse(query)?;
    let found =
        agency
            .state
            .named_page::<model::User>(page.prefix.as_bytes(), page.after(), page.limit)?;
    let (users, next_cursor) = page::views(found, |u| Ok(UserView::from(u)))?;
    Ok(UserList { users, next_cursor })
}

/// A change to a user.
pub enum Change {
    /// New attributes or password.
    Update(UpdateUserRequest),
    /// Disabled (true) or enabled again.
    Disabled(bool),
}

/// Changes the user `username`; a change that ends the user's sessions
/// tells their sites (through the outbox).
pub async fn change(
    agency: &Agency,
    hasher: &Hashers,
    username: &str,
    change: Change,
    request_id: Option<RequestId>,
) -> Result<UserView> {
    let op = match change {
        Change::Update(req) => {
            let patch = patch_of(hasher, req).await?;
            let username = username.to_string();
            Op::UpdateUser { username, patch }
        }
        Change::Disabled(disabled) => {
            let username = username.to_string();
            Op::SetUserDisabled { username, disabled }
        }
    };
    user_of(agency.write(op, request_id).await?)
}

async fn patch_of(hasher: &Hashers, req: UpdateUserRequest) -> Result<UserPatch> {
    if let Some(d) = &req.display_name {
        check(model::validate_text("display_name", d))?;
    }
    if let Some(e) = &req.email {
        check(model::validate_text("email", e))?;
    }
    if let Some(g) = &req.groups {
        check(model::validate_groups(g))?;
    }
    for (k, v) in &req.attributes {
        check(model::validate_attribute(k, v.as_deref()))?;
    }
    let password_hash = match req.password {
        Some(p) => Some(hash(hasher, p).await?),
        None => None,
    };
    Ok(UserPatch {
        display_name: req.display_name,
        email: req.email.map(|e| if e.is_empty() { None } else { Some(e) }),
        groups: req.groups,
        attributes: req.attributes,
        password_hash,
    })
}
