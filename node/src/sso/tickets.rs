//! Ticket redemption: a partner site exchanges the one-time login ticket
//! (authorization code) it received for tokens, at most once. The ticket is
//! sealed (`sealing`): this node opens it and checks it, then one replicated
//! command marks its id spent and grants the tokens, so a ticket redeemed on
//! one node cannot be redeemed on another; a ticket that does not open —
//! forged, altered, expired key — is refused here, never proposed.
//! (Tickets are issued by the ticket issuer actor, `actors::ticket_issuer`.)

use baa_proto::command::{Consistency, Op};
use baa_proto::sso::{secret_hash, SecretHash, Site};
use baa_proto::ErrorCode;

use super::grants::{known, required_within, Minted, TokenRequest};

/// The longest ticket a site may present (sealed tickets are a few hundred
/// bytes).
const MAX_TICKET_LEN: usize = 2048;
use crate::agency::Agency;
use crate::error::NodeError;

/// The command that redeems the request's ticket for `minted`, with the
/// session and ticket id a sealed access token is to be made for once it
/// is applied (`None`: the command stores `minted`'s access token).
pub(super) async fn redemption(
    agency: &Agency,
    site: &Site,
    req: &TokenRequest,
    minted: &Minted,
) -> Result<(Op, Option<(SecretHash, [u8; 16])>), NodeError> {
    let code = required_within(&req.code, "code", MAX_TICKET_LEN)?;
    let unknown = || NodeError::BadRequest {
        code: ErrorCode::InvalidGrant,
        message: "the ticket is unknown or expired".into(),
    };
    if !code.starts_with("t1.") {
        // A stored ticket of the release before sealed tickets.
        return Ok((
            stored_redemption(agency, site, req, minted, &code).await?,
            None,
        ));
    }
    let ticket = match agency.tickets.open(&code) {
        Some(t) => t,
        None => {
            // Sealed a moment ago with a key this node has not applied yet?
            agency.read_barrier(Consistency::Linearizable).await?;
            agency.tickets.invalidate();
            agency.tickets.open(&code).ok_or_else(unknown)?
        }
    };
    let (redirect_uri, verifier_challenge) = presented(req)?;
    let sealed_for = (ticket.session_key, ticket.id);
    // The state machine keeps a refresh token only with `offline_access`:
    // without it the record would ride in every login's Raft entry for nothing.
    let offline = ticket.scopes.iter().any(|s| s == "offline_access");
    let op = Op::RedeemSealedOnce {
        ticket: Box::new(ticket),
        client_id: site.client_id.clone(),
        redirect_uri,
        verifier_challenge,
        access_ttl_ms: agency.config.sso.access_token_ttl_s.saturating_mul(1000),
        refresh: offline.then(|| Box::new(minted.refresh_record.clone())),
    };
    Ok((op, Some(sealed_for)))
}

/// The redirect URI and the S256 of the verifier a token request presents.
fn presented(req: &TokenRequest) -> Result<(String, Option<String>), NodeError> {
    let redirect_uri = req
        .redirect_uri
        .clone()
        .ok_or_else(|| NodeError::invalid("redirect_uri is required"))?;
    let verifier_challenge = match &req.code_verifier {
        Some(v) if !baa_proto::pkce::well_formed(v) => {
            return Err(NodeError::BadRequest {
                code: ErrorCode::InvalidGrant,
                message: "code_verifier is malformed".into(),
            })
        }
        Some(v) => Some(baa_proto::pkce::s256(v)),
        None => None,
    };
    Ok((redirect_uri, verifier_challenge))
}

/// The redemption of a ticket stored by the release before sealed tickets
/// (those still in flight across an upgrade).
async fn stored_redemption(
    agency: &Agency,
    site: &Site,
    req: &TokenRequest,
    minted: &Minted,
    code: &str,
) -> Result<Op, NodeError> {
    let hash = secret_hash(code.as_bytes());
    known(agency, "the ticket is unknown or expired", |s| {
        s.ticket(&hash)
    })
    .await?;
    let (redirect_uri, verifier_challenge) = presented(req)?;
    Ok(Op::RedeemTicket {
        hash,
        client_id: site.client_id.clone(),
        redirect_uri,
        verifier_challenge,
        token: Box::new(minted.access_record.clone()),
        refresh: Some(Box::new(minted.refresh_record.clone())),
    })
}
