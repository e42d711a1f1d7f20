//! Browser sessions: the signed reference that names one on the shared
//! cookie domain, and a user's sessions as an administrator sees them (list
//! them, end one by its public handle, end them all). Ending a session ends every token bound
//! to it; the caller tells the sites (back-channel logout) with what comes back.

use baa_proto::api::{ListQuery, SessionList, SessionView};
use baa_proto::command::{Op, Outcome, RequestId};
use baa_proto::cookie::Reference;
use baa_proto::sso::{RevokedSession, Session};
use baa_proto::ErrorCode;

use crate::agency::Agency;
use crate::clock::now_ms;
use crate::error::{NodeError, Result};
use crate::sso::page::{self, Page};

/// The agency reference cookie's value for `session`: a JWS naming the
/// agency and the session's public handle (verifiable by partner sites and
/// peer agencies, useless as a credential).
pub fn reference(agency: &Agency, session: &Session) -> Result<String> {
    agency.keys.sign_reference(&Reference {
        iss: agency.config.issuer.clone(),
        sid: session.sid.clone(),
        iat: session.created_ms / 1000,
        exp: session.absolute_expiry_ms / 1000,
    })
}

fn user_id(agency: &Agency, username: &str) -> Result<u64> {
    agency.state.user(username)?.map(|u| u.id).ok_or_else(|| {
        NodeError::Apply(baa_proto::command::ApplyError::new(
            ErrorCode::UserNotFound,
            format!("no user named {username}"),
        ))
    })
}

/// One page of the user's live sessions, in storage-key order (see
/// `sso::page`; they have no name to filter by).
pub fn list(agency: &Agency, username: &str, query: &ListQuery) -> Result<SessionList> {
    let page = Page::parse_without_prefix(query)?;
    let user_id = user_id(agency, username)?;
    let now = now_ms();
    let found = agency
        .state
        .sessions_page(user_id, page.after(), page.limit, |s| s.alive_at(now))?;
    let (sessions, next_cursor) = page::views(found, |s| Ok(SessionView::from(s)))?;
    Ok(SessionList {
        sessions,
        next_cursor,
    })
}

/// Ends every session of the user.
pub async fn end_all(
    agency: &Agency,
    username: &str,
    request_id: Option<RequestId>,
) -> Result<Vec<RevokedSession>> {
    let op = Op::RevokeUserSessions {
        username: username.to_string(),
    };
    match agency.write(op, request_id).await? {
        Outcome::RevokedAll(ended) => Ok(ended),
        other => Err(NodeError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

/// Ends the session whose public handle is `sid`.
pub async fn end_one(
    agency: &Agency,
    sid: &str,
    request_id: Option<RequestId>,
) -> Result<RevokedSession> {
    let not_found = || {
        NodeError::Apply(baa_proto::command::ApplyError::new(
            ErrorCode::SessionNotFound,
            format!("no session {sid}"),
        ))
    };
    let session = agency.state.session_by_sid(sid)?.ok_or_else(not_found)?;
    match agency
        .write(Op::RevokeSession { key: session.key }, request_id)
        .await?
    {
        Outcome::Revoked(r) => Ok(r),
        other => Err(NodeError::Internal(format!("unexpected outcome {other:?}"))),
    }
}
