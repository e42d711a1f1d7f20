//! Partner sites as an administrator manages them (register, list, look
//! up, remove), and users' trust relationships with them (list, revoke).
//! Removing a site or revoking trust ends the tokens it holds.

use baa_proto::api::{CreateSiteRequest, CreatedSite, ListQuery, SiteList, SiteView};
use baa_proto::command::{ApplyError, Op, Outcome, RequestId};
use baa_proto::sso::{secret_hash, IdTokenAlg, Site, SiteOptions, Trust};
use baa_proto::ErrorCode;

use crate::agency::Agency;
use crate::error::{NodeError, Result};
use crate::secrets::random_secret;
use crate::sso::page::{self, Page};

/// Registers a site; a confidential site without a secret of its own gets
/// a generated one, shown this once.
pub async fn register(
    agency: &Agency,
    req: CreateSiteRequest,
    request_id: Option<RequestId>,
) -> Result<CreatedSite> {
    let secret = match (req.public, req.client_secret) {
        (true, Some(_)) => {
            return Err(NodeError::invalid(
                "a public client has no secret; drop client_secret or public",
            ))
        }
        (true, None) => None,
        (false, Some(s)) if s.len() < 32 || s.len() > 256 => {
            return Err(NodeError::invalid(
                "client_secret must be 32 to 256 characters",
            ))
        }
        (false, Some(s)) => Some(s),
        (false, None) => Some(random_secret().0),
    };
    let site = Site {
        name: req.name.unwrap_or_else(|| req.client_id.clone()),
        client_id: req.client_id,
        redirect_uris: req.redirect_uris,
        post_logout_redirect_uris: req.post_logout_redirect_uris,
        secret_hash: secret.as_ref().map(|s| secret_hash(s.as_bytes())),
        backchannel_logout_uri: req.backchannel_logout_uri,
        allowed_scopes: req
            .allowed_scopes
            .unwrap_or_else(|| ["openid", "profile", "email"].map(String::from).to_vec()),
        created_ms: 0,
    };
    baa_proto::sso::validate_site(&site).map_err(|e| NodeError::invalid(e.0))?;
    let options = SiteOptions {
        default_response_mode: req.default_response_mode.unwrap_or_default(),
    };
    let id_token_alg = req.id_token_signed_response_alg.unwrap_or_default();
    // The older command while it says everything: a node not yet upgraded
    // applies it.
    let op = match id_token_alg {
        IdTokenAlg::Rs256 => Op::RegisterSite {
            site: Box::new(site),
            options,
        },
        _ => Op::RegisterSiteWithAlg {
            site: Box::new(site),
            options,
            id_token_alg,
        },
    };
    match agency.write(op, request_id).await? {
        Outcome::Site(s) => Ok(CreatedSite {
            site: SiteView::new(&s, options, id_token_alg),
            client_secret: secret,
        }),
        other => Err(NodeError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

/// One page of sites with their options, in client id order (see
/// `sso::page`).
pub fn list(agency: &Agency, query: &ListQuery) -> Result<SiteList> {
    let page = Page::parse(query)?;
    let found =
        agency
            .state
            .named_page::<Site>(page.prefix.as_bytes(), page.after(), page.limit)?;
    let (sites, next_cursor) = page::views(found, |s| view(agency, s))?;
    Ok(SiteList { sites, next_cursor })
}

fn no_site(id: &str) -> NodeError {
    ApplyError::new(ErrorCode::SiteNotFound, format!("no site {id}")).into()
}

/// The site `client_id`.
pub fn get(agency: &Agency, client_id: &str) -> Result<SiteView> {
    let site = agency
        .state
        .site(client_id)?
        .ok_or_else(|| no_site(client_id))?;
    view(agency, &site)
}

fn view(agency: &Agency, s: &Site) -> Result<SiteView> {
    Ok(SiteView::new(
        s,
        agency.state.site_options(&s.client_id)?,
        agency.state.id_token_alg(&s.client_id)?,
    ))
}

/// Removes a site, its trust relationships and its tokens.
pub async fn remove(
    agency: &Agency,
    client_id: String,
    request_id: Option<RequestId>,
) -> Result<()> {
    agency
        .write(Op::RemoveSite { client_id }, request_id)
        .await?;
    Ok(())
}

fn user_id(agency: &Agency, username: &str) -> Result<u64> {
    agency.state.user(username)?.map(|u| u.id).ok_or_else(|| {
        ApplyError::new(ErrorCode::UserNotFound, format!("no user named {username}")).into()
    })
}

/// The user's trust relationships.
pub fn trust_of(agency: &Agency, username: &str) -> Result<Vec<Trust>> {
    Ok(agency.state.trusts(user_id(agency, username)?)?)
}

/// Revokes the user's trust in a site (and the tokens the site holds).
pub async fn revoke_trust(
    agency: &Agency,
    username: &str,
    client_id: String,
    request_id: Option<RequestId>,
) -> Result<()> {
    let user_id = user_id(agency, username)?;
    let op = Op::RevokeTrust { user_id, client_id };
    agency.write(op, request_id).await?;
    Ok(())
}
