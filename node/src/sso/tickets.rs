//! Ticket redemption: a partner site exchanges the one-time login ticket
//! (authorization code) it received for tokens, at most once. The check
//! and the spending are one replicated command, so a ticket redeemed on one
//! node cannot be redeemed on another; a ticket no one issued is refused
//! here, never proposed. (Tickets are issued by the ticket issuer actor,
//! `actors::ticket_issuer`.)

use baa_proto::command::Op;
use baa_proto::sso::{secret_hash, Site};
use baa_proto::ErrorCode;

use super::grants::{known, required, Minted, TokenRequest};
use crate::agency::Agency;
use crate::error::NodeError;

/// The command that redeems the request's ticket for `minted`.
pub(super) async fn redemption(
    agency: &Agency,
    site: &Site,
    req: &TokenRequest,
    minted: &Minted,
) -> Result<Op, NodeError> {
    let code = required(&req.code, "code")?;
    let hash = secret_hash(code.as_bytes());
    known(agency, "the ticket is unknown or expired", |s| {
        s.ticket(&hash)
    })
    .await?;
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
    Ok(Op::RedeemTicket {
        hash,
        client_id: site.client_id.clone(),
        redirect_uri,
        verifier_challenge,
        token: Box::new(minted.access_record.clone()),
        refresh: Some(Box::new(minted.refresh_record.clone())),
    })
}
