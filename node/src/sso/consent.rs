//! The trust page's decision: the user approves (or declines) that a site
//! learns who they are, with the scopes asked and the account name and
//! details they chose; an approval is a replicated trust relationship, and
//! the login goes on to the site's ticket.

use actix::Addr;
use baa_proto::command::Op;
use baa_proto::model::User;
use baa_proto::sso::{AccountName, LoginParams, PairwiseSalt, Session, Trust};
use baa_proto::ErrorCode;

use super::authorize::{issue_ticket, Authz, Next};
use crate::actors::cookie_validator::ValidSession;
use crate::actors::ticket_issuer::TicketIssuer;
use crate::agency::Agency;
use crate::clock::now_ms;
use crate::error::NodeError;

/// What the user chose on the trust page.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Approve (else decline).
    pub approve: bool,
    /// Which account name the site sees, and which details it may have.
    pub params: LoginParams,
}

impl Decision {
    /// The decision from the page's form fields.
    pub fn from_form(
        decision: &str,
        account_name: Option<&str>,
        share_name: bool,
        share_email: bool,
    ) -> Self {
        Self {
            approve: decision == "approve",
            params: LoginParams {
                account_name: match account_name {
                    Some("pseudonym") => AccountName::Pseudonym,
                    _ => AccountName::Username,
                },
                share_name,
                share_email,
            },
        }
    }
}

/// The user of a session and the agency's pairwise salt: what the trust
/// page shows (the pseudonym the site would see).
pub async fn who(agency: &Agency, s: &Session) -> Result<(PairwiseSalt, User), NodeError> {
    let salt = crate::key_rotation::pairwise_salt(agency).await?;
    let user = agency.state.user_by_id(s.user_id)?.ok_or_else(|| {
        NodeError::Apply(baa_proto::command::ApplyError::new(
            ErrorCode::UserNotFound,
            "the account of this session no longer exists",
        ))
    })?;
    Ok((salt, user))
}

/// Records the user's decision for the site; an approval goes on to the
/// site's ticket, a refusal to `access_denied` for the site.
pub async fn decide(
    agency: &Agency,
    issuer: &Addr<TicketIssuer>,
    a: &Authz,
    v: &ValidSession,
    decision: Decision,
) -> Result<Next, NodeError> {
    if !decision.approve {
        return Ok(Next::SiteError(
            ErrorCode::AccessDenied,
            "the user declined",
        ));
    }
    let now = now_ms();
    let trust = Trust {
        user_id: v.session.user_id,
        client_id: a.site.client_id.clone(),
        scopes: a.scopes.clone(),
        params: decision.params,
        created_ms: now,
        updated_ms: now,
    };
    agency.write(Op::SetTrust(Box::new(trust)), None).await?;
    issue_ticket(agency, issuer, a, v).await
}

/// A user and the sites they trust.
pub struct Trusting {
    /// The user.
    pub user: User,
    /// The sites, as (client id, name).
    pub sites: Vec<(String, String)>,
}

/// The user of `user_id` and the sites they trust; `None` when the account
/// no longer exists.
pub fn trusted_sites(agency: &Agency, user_id: u64) -> Result<Option<Trusting>, NodeError> {
    let Some(user) = agency.state.user_by_id(user_id)? else {
        return Ok(None);
    };
    let mut sites = Vec::new();
    for t in agency.state.trusts(user.id)? {
        let name = agency
            .state
            .site(&t.client_id)?
            .map_or_else(|| t.client_id.clone(), |s| s.name);
        sites.push((t.client_id, name));
    }
    Ok(Some(Trusting { user, sites }))
}
