//! Refresh-token rotation (RFC 6749 §6, RFC 9700 §4.14.2): each refresh
//! token is used once and replaced by a new one of the same family; a used
//! token presented again revokes the whole family (the state machine does
//! that in log order). A refresh token is how a native app's token goes on
//! mapping to the browser session it was made from.

use baa_proto::command::Op;
use baa_proto::sso::{secret_hash, Site};

use super::grants::{known, required, Minted, TokenRequest};
use crate::agency::Agency;
use crate::error::NodeError;

/// The command that rotates the request's refresh token into `minted`.
pub(super) async fn rotation(
    agency: &Agency,
    site: &Site,
    req: &TokenRequest,
    minted: &Minted,
) -> Result<Op, NodeError> {
    let hash = secret_hash(required(&req.refresh_token, "refresh_token")?.as_bytes());
    let unknown = "the refresh token is unknown, expired or revoked";
    known(agency, unknown, |s| s.refresh_token(&hash)).await?;
    Ok(Op::Refresh {
        hash,
        client_id: site.client_id.clone(),
        token: Box::new(minted.access_record.clone()),
        refresh: Box::new(minted.refresh_record.clone()),
    })
}
