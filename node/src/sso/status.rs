//! Status detection without a redirect: a partner site under the shared
//! cookie domain receives the agency reference cookie and asks, server to
//! server and authenticated as itself, whether the session it names is alive
//! and whether the user trusts that site. The answer carries no identity.

use baa_proto::sso::Site;
use serde::Serialize;

use crate::agency::Agency;
use crate::clock::now_ms;
use crate::error::NodeError;

/// What a site learns about the session a reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SessionStatus {
    /// The reference is this agency's, unexpired, and its session is alive.
    pub active: bool,
    /// `active`, and the session's user has a trust relationship with the site.
    pub trusted: bool,
}

/// The status of the session `reference` (an agency reference cookie's
/// value) names, as `site` may know it. Anything that is not a live session
/// of this agency is simply inactive, as in token introspection.
pub fn session_status(
    agency: &Agency,
    site: &Site,
    reference: &str,
) -> Result<SessionStatus, NodeError> {
    let inactive = SessionStatus {
        active: false,
        trusted: false,
    };
    let Some(claims) = agency
        .keys
        .verify_reference(reference, &agency.config.issuer)
    else {
        return Ok(inactive);
    };
    let Some(session) = agency.state.session_by_sid(&claims.sid)? else {
        return Ok(inactive);
    };
    if !session.alive_at(now_ms()) {
        return Ok(inactive);
    }
    let trusted = agency
        .state
        .trust(session.user_id, &site.client_id)?
        .is_some();
    Ok(SessionStatus {
        active: true,
        trusted,
    })
}
