//! Sign-in with a peer agency's word. A browser whose reference cookie names
//! a peer B, with a session B says is alive, is sent on a silent top-level
//! round trip to B (`prompt=none`; this agency is B's client by the
//! peering, PKCE and a nonce bind the answer to this browser). B answers
//! with a ticket, which this agency redeems at B's token endpoint with a
//! client assertion signed by its federation key, for an ID token addressed
//! to it: so the browser's session at B, not a readable cookie, proves the
//! user. The peer's subject is linked to a local account and a session of
//! it starts, linked to B's; the shared reference keeps naming B.

use baa_proto::command::{Op, Outcome};
use baa_proto::cookie::SESSION_SECRET_LEN;
use baa_proto::federation::{
    peer_client_id, FederatedSignIn, CALLBACK_PATH, CLIENT_ASSERTION_TYPE, ROUND_TRIP_TYP,
};
use baa_proto::sso::{public_sid, secret_hash, Session};
use baa_proto::ErrorCode;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::authorize::AuthParams;
use crate::actors::cookie_validator::ValidSession;
use crate::agency::Agency;
use crate::clock::now_ms;
use crate::config::LinkPolicy;
use crate::error::NodeError;
use crate::metrics::PeerCheck;
use crate::peers::PeerView;

/// How long a browser may take to come back from a peer.
pub const ROUND_TRIP_TTL_S: u64 = 600;

/// What this agency keeps in the browser (signed) while it is at the peer.
#[derive(Serialize, Deserialize)]
struct RoundTrip {
    iss: String,
    peer: String,
    state: String,
    nonce: String,
    verifier: String,
    params: AuthParams,
    exp: u64,
}

/// Where to send the browser, and the cookie that remembers why.
pub struct Departure {
    /// The peer's authorization URL.
    pub url: String,
    /// The round trip's state (a signed value, for a host-only cookie).
    pub cookie: String,
}

/// Starts a round trip to `peer` that continues the authorization request
/// `params` here once it comes back: silent (`prompt=none`) when the
/// browser's reference says the user is signed in there; otherwise the
/// user signs in at the peer (with the site's `login_hint`).
pub fn depart(
    agency: &Agency,
    peer: &PeerView,
    params: &AuthParams,
    silent: bool,
) -> Result<Departure, NodeError> {
    let (state, _) = crate::secrets::random_secret();
    let (nonce, _) = crate::secrets::random_secret();
    let (verifier, _) = crate::secrets::random_secret();
    let issuer = &agency.config.issuer;
    let trip = RoundTrip {
        iss: issuer.clone(),
        peer: peer.issuer.clone(),
        state: state.clone(),
        nonce: nonce.clone(),
        verifier: verifier.clone(),
        params: params.clone(),
        exp: now_ms() / 1000 + ROUND_TRIP_TTL_S,
    };
    let cookie = agency.keys.sign_jwt(&trip, ROUND_TRIP_TYP)?;
    let mut query = vec![
        ("client_id", peer_client_id(issuer)),
        ("redirect_uri", format!("{issuer}{CALLBACK_PATH}")),
        ("response_type", "code".into()),
        ("response_mode", "form_post".into()),
        ("scope", "openid profile email".into()),
        ("state", state),
        ("nonce", nonce),
        ("code_challenge", baa_proto::pkce::s256(&verifier)),
        ("code_challenge_method", "S256".into()),
    ];
    match (silent, params.login_hint()) {
        (true, _) => query.push(("prompt", "none".into())),
        (false, Some(hint)) => query.push(("login_hint", hint.into())),
        (false, None) => {}
    }
    let query = serde_urlencoded::to_string(query)
        .map_err(|e| NodeError::Internal(format!("encoding a query: {e}")))?;
    let sep = if peer.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    Ok(Departure {
        url: format!("{}{sep}{query}", peer.authorization_endpoint),
        cookie,
    })
}

/// The peer agency a site's `login_hint` (`user@DOMAIN`) names as the
/// user's home: by `[federation] home_domains`, or a peer whose issuer's
/// host is DOMAIN.
pub fn hinted_home(agency: &Agency, params: &AuthParams) -> Option<std::sync::Arc<PeerView>> {
    let domain = params
        .login_hint()?
        .rsplit_once('@')?
        .1
        .to_ascii_lowercase();
    let rules = agency.config.federation.home_domains().unwrap_or_default();
    if let Some((_, issuer)) = rules.iter().find(|(d, _)| *d == domain) {
        return agency.peers.get(issuer);
    }
    agency.peers.all().into_iter().find(|p| {
        url::Url::parse(&p.issuer)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.eq_ignore_ascii_case(&domain)))
            .unwrap_or(false)
    })
}

/// The peer's answer at the callback.
#[derive(Debug, Default, Deserialize)]
pub struct Answer {
    /// The ticket.
    pub code: Option<String>,
    /// The round trip's state.
    pub state: Option<String>,
    /// The peer's refusal (`login_required`, …).
    pub error: Option<String>,
}

/// Why a round trip made no session.
pub struct Refused {
    /// The peer, when the round trip's state named one.
    pub peer: Option<String>,
    /// The request to continue, when the state was good.
    pub params: Option<AuthParams>,
    /// What went wrong, for the page.
    pub code: ErrorCode,
    /// What went wrong, in words.
    pub message: String,
}

/// A session made by a round trip, and the request it continues.
pub struct Arrived {
    /// The new session.
    pub session: ValidSession,
    /// Its secret, for the session cookie.
    pub secret: [u8; SESSION_SECRET_LEN],
    /// The authorization request to continue.
    pub params: AuthParams,
}

fn refused(trip: Option<&RoundTrip>, code: ErrorCode, message: impl Into<String>) -> Refused {
    Refused {
        peer: trip.map(|t| t.peer.clone()),
        params: trip.map(|t| t.params.clone()),
        code,
        message: message.into(),
    }
}

/// The round trip the browser's cookie holds, if this agency signed it,
/// unexpired, and the answer's state is its own.
fn trip_of(agency: &Agency, cookie: Option<&str>, answer: &Answer) -> Option<RoundTrip> {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_issuer(&[&agency.config.issuer]);
    v.set_required_spec_claims(&["exp", "iss"]);
    v.validate_aud = false;
    let trip: RoundTrip = agency.keys.verify_jwt(cookie?, &v, ROUND_TRIP_TYP)?;
    let state = answer.state.as_deref()?;
    bool::from(state.as_bytes().ct_eq(trip.state.as_bytes())).then_some(trip)
}

/// Completes a round trip with the peer's `answer`: redeems the ticket,
/// checks the ID token and signs the user in here.
pub async fn arrive(
    agency: &Agency,
    cookie: Option<&str>,
    answer: &Answer,
) -> Result<Arrived, Refused> {
    let Some(trip) = trip_of(agency, cookie, answer) else {
        return Err(refused(
            None,
            ErrorCode::InvalidRequest,
            "The answer of the other agency does not belong to this browser's sign-in. Start again.",
        ));
    };
    let m = &agency.metrics;
    let result = arrive_with(agency, &trip, answer).await;
    let outcome = match &result {
        Ok(_) => PeerCheck::Alive,
        Err(r) if r.code == ErrorCode::LoginRequired => PeerCheck::Ended,
        Err(r) if r.code == ErrorCode::PeerUnreachable => PeerCheck::Unreachable,
        Err(_) => PeerCheck::Refused,
    };
    m.round_trip(&trip.peer, outcome);
    result
}

async fn arrive_with(
    agency: &Agency,
    trip: &RoundTrip,
    answer: &Answer,
) -> Result<Arrived, Refused> {
    let t = Some(trip);
    if let Some(e) = &answer.error {
        let code = match e.as_str() {
            "login_required" | "interaction_required" | "consent_required" => {
                ErrorCode::LoginRequired
            }
            _ => ErrorCode::PeerSessionRefused,
        };
        return Err(refused(
            t,
            code,
            format!("You are not signed in at your home agency ({e})."),
        ));
    }
    let code = answer
        .code
        .as_deref()
        .ok_or_else(|| refused(t, ErrorCode::InvalidRequest, "The answer has no ticket."))?;
    let peer = agency.peers.get(&trip.peer).ok_or_else(|| {
        refused(
            t,
            ErrorCode::PeerUnreachable,
            "Your home agency's configuration is not known here right now.",
        )
    })?;
    let id_token = redeem(agency, &peer, trip, code)
        .await
        .map_err(|e| refused(t, ErrorCode::PeerUnreachable, e))?;
    let audience = peer_client_id(&agency.config.issuer);
    let mut checked = peer.verify_id_token(&id_token, &audience);
    if checked.as_ref().err() == Some(&crate::peers::PeerKeyError::UnknownKey)
        && crate::actors::federation_directory::refresh_now(agency, &trip.peer).await
    {
        if let Some(fresh) = agency.peers.get(&trip.peer) {
            checked = fresh.verify_id_token(&id_token, &audience);
        }
    }
    let claims = checked.map_err(|_| {
        refused(
            t,
            ErrorCode::PeerSessionRefused,
            "Your home agency's answer does not verify.",
        )
    })?;
    let text = |k: &str| claims[k].as_str().unwrap_or("").to_string();
    if text("nonce") != trip.nonce || text("sid").is_empty() || text("sub").is_empty() {
        return Err(refused(
            t,
            ErrorCode::PeerSessionRefused,
            "Your home agency's answer is not for this sign-in.",
        ));
    }
    sign_in(agency, trip, &claims)
        .await
        .map_err(|e| refused(t, e.code(), e.to_string()))
}

/// Redeems the peer's ticket for its ID token.
async fn redeem(
    agency: &Agency,
    peer: &PeerView,
    trip: &RoundTrip,
    code: &str,
) -> Result<String, String> {
    let client = agency
        .peers
        .client(&agency.config.federation)
        .map_err(|e| e.to_string())?;
    let assertion = crate::key_rotation::federation_assertion(agency, &peer.issuer)
        .map_err(|e| e.to_string())?;
    let issuer = &agency.config.issuer;
    let form = [
        ("grant_type", "authorization_code".to_string()),
        ("code", code.to_string()),
        ("redirect_uri", format!("{issuer}{CALLBACK_PATH}")),
        ("code_verifier", trip.verifier.clone()),
        ("client_id", peer_client_id(issuer)),
        ("client_assertion_type", CLIENT_ASSERTION_TYPE.to_string()),
        ("client_assertion", assertion),
    ];
    let resp = client
        .post(&peer.token_endpoint)
        .form(&form)
        .send()
        .await
        .map_err(|e| format!("your home agency could not be reached: {}", e.without_url()))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    match body["id_token"].as_str() {
        Some(t) if status.is_success() => Ok(t.to_string()),
        _ => Err(format!(
            "your home agency refused the ticket (HTTP {status}, {})",
            body["error"].as_str().unwrap_or("no error code")
        )),
    }
}

/// Ends the sessions derived from the peer session a peer's back-channel
/// logout token names (and with them every token bound to them; their
/// sites hear of it through this agency's outbox). Returns how many ended.
pub async fn peer_logout(agency: &Agency, token: &str) -> Result<usize, NodeError> {
    let bad = || NodeError::invalid("the logout token is not a peer agency's");
    let issuer = crate::actors::peer_sessions::claimed_issuer(token).ok_or_else(bad)?;
    let peer = agency.peers.get(&issuer).ok_or_else(bad)?;
    let audience = peer_client_id(&agency.config.issuer);
    let claims = peer
        .verify_logout_token(token, &audience)
        .map_err(|_| bad())?;
    let sid = claims["sid"].as_str().unwrap_or_default();
    // Sessions derived a moment ago through another node count too.
    agency
        .read_barrier(baa_proto::command::Consistency::Linearizable)
        .await?;
    let keys = agency.state.sessions_of_peer_session(&issuer, sid)?;
    let mut ended = 0;
    for key in keys {
        match agency.write(Op::RevokeSession { key }, None).await {
            Ok(Outcome::Revoked(r)) => {
                tracing::info!(sid = %r.sid, peer = %issuer, tokens = r.tokens_revoked, "signed out by the home agency");
                ended += 1;
            }
            Ok(_) => {}
            Err(NodeError::Apply(e)) if e.code == ErrorCode::SessionNotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ended)
}

/// Links the peer's subject and starts the local session.
async fn sign_in(
    agency: &Agency,
    trip: &RoundTrip,
    claims: &serde_json::Value,
) -> Result<Arrived, NodeError> {
    let text = |k: &str| claims[k].as_str().unwrap_or("").to_string();
    let secret = crate::secrets::random_bytes::<SESSION_SECRET_LEN>();
    let key = secret_hash(&secret);
    let now = now_ms();
    let s = &agency.config.sso;
    let auth_time_ms = claims["auth_time"]
        .as_u64()
        .map_or(now, |t| t.saturating_mul(1000).min(now));
    let session = Session {
        key,
        sid: public_sid(&key),
        user_id: 0,
        username: String::new(),
        agency: s.agency.clone(),
        created_ms: now,
        last_seen_ms: now,
        idle_timeout_ms: s.session_idle_timeout_s * 1000,
        absolute_expiry_ms: now + s.session_lifetime_s * 1000,
        auth_time_ms,
        methods: vec!["fed".into()],
        sites: Vec::new(),
    };
    let printable = |v: String, max: usize| -> String {
        v.chars().filter(|c| !c.is_control()).take(max).collect()
    };
    let email = Some(printable(text("email"), 254)).filter(|e| !e.is_empty());
    let f = FederatedSignIn {
        peer: trip.peer.clone(),
        sub: text("sub"),
        username_hint: text("preferred_username"),
        display_name: printable(text("name"), 128),
        email,
        create: agency.config.federation.link == LinkPolicy::Create,
        session,
        peer_sid: text("sid"),
    };
    let session = match agency.write(Op::FederatedSignIn(Box::new(f)), None).await? {
        Outcome::Session(s) => *s,
        _ => return Err(NodeError::Internal("unexpected outcome".into())),
    };
    tracing::info!(user = %session.username, sid = %session.sid, peer = %trip.peer, "signed in with a peer agency's word");
    Ok(Arrived {
        session: ValidSession { session, key },
        secret,
        params: trip.params.clone(),
    })
}
