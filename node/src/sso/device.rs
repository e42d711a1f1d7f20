//! The device authorization grant (RFC 8628): an app without a browser of
//! its own starts a grant and shows a short user code; the user, signed in
//! on any browser, types it on the device page and approves or declines;
//! the app polls the token endpoint (see `sso::tokens`). Wrong codes are
//! throttled per source like wrong passwords.

use baa_proto::command::{Op, Outcome};
use baa_proto::sso::{
    normalise_user_code, secret_hash, DeviceGrant, DeviceStatus, Site, ThrottleSubject,
};
use baa_proto::ErrorCode;
use rand::Rng;

use super::grants::{known, required, Minted, TokenRequest};
use crate::actors::cookie_validator::ValidSession;
use crate::agency::Agency;
use crate::clock::now_ms;
use crate::error::NodeError;
use crate::secrets::random_secret;

/// Letters of user codes: no vowels (no words), no look-alikes.
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

fn new_user_code() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..8)
        .map(|_| USER_CODE_ALPHABET[rng.gen_range(0..USER_CODE_ALPHABET.len())] as char)
        .collect()
}

/// Shows a user code as people read it: `BCDF-GHJK`.
pub fn display_code(code: &str) -> String {
    if code.len() == 8 {
        format!("{}-{}", &code[..4], &code[4..])
    } else {
        code.to_string()
    }
}

/// A started grant, as the app hears it (RFC 8628 §3.2). Deliberately not
/// `Debug`: it holds the device code.
#[derive(serde::Serialize)]
pub struct Started {
    /// The secret the app polls with.
    pub device_code: String,
    /// The code the user types, as people read it.
    pub user_code: String,
    /// The device page.
    pub verification_uri: String,
    /// The device page with the code filled in.
    pub verification_uri_complete: String,
    /// Seconds until the grant expires.
    pub expires_in: u64,
    /// Seconds between polls.
    pub interval: u64,
}

/// Starts a grant for `site` with the space-separated `scope` (default
/// `openid`). Each start is a write, so starts are limited per source and
/// per client here and capped cluster-wide by the state machine.
pub async fn start(
    agency: &Agency,
    site: &Site,
    scope: Option<&str>,
    source: &str,
) -> Result<Started, NodeError> {
    agency.limits.device_per_source.check(&source.to_string())?;
    agency.limits.device_per_client.check(&site.client_id)?;
    if agency.state.device_grants()? >= crate::raft::state_machine::MAX_DEVICE_GRANTS {
        return Err(NodeError::Busy);
    }
    let scopes: Vec<String> = scope
        .unwrap_or("openid")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if let Some(s) = scopes.iter().find(|s| !site.allowed_scopes.contains(s)) {
        return Err(NodeError::BadRequest {
            code: ErrorCode::InvalidScope,
            message: format!("scope {s} is not allowed for this client"),
        });
    }
    let sso = &agency.config.sso;
    let (device_code, device_hash) = random_secret();
    let user_code = new_user_code();
    let now = now_ms();
    let grant = DeviceGrant {
        device_hash,
        user_code: user_code.clone(),
        client_id: site.client_id.clone(),
        scopes,
        issued_ms: now,
        expires_ms: now + sso.device_code_ttl_s * 1000,
        interval_s: sso.device_poll_interval_s,
        last_poll_ms: 0,
        status: DeviceStatus::Pending,
    };
    agency.write(Op::StartDevice(Box::new(grant)), None).await?;
    let uri = format!("{}/device", agency.config.issuer);
    agency.metrics.device_flow("started");
    Ok(Started {
        device_code,
        user_code: display_code(&user_code),
        verification_uri_complete: format!("{uri}?user_code={}", display_code(&user_code)),
        verification_uri: uri,
        expires_in: sso.device_code_ttl_s,
        interval: sso.device_poll_interval_s,
    })
}

/// A pending grant the user may decide, as the confirmation page shows it.
pub struct Pending {
    /// The code, as people read it.
    pub code: String,
    /// The app's name.
    pub app: String,
    /// The scopes it asks for.
    pub scopes: Vec<String>,
}

/// The pending, unexpired grant the typed code names, if any.
pub fn pending(agency: &Agency, typed: &str) -> Result<Option<Pending>, NodeError> {
    let code = normalise_user_code(typed);
    let Some(d) = agency.state.device_by_user_code(&code)? else {
        return Ok(None);
    };
    if d.status != DeviceStatus::Pending || now_ms() >= d.expires_ms {
        return Ok(None);
    }
    let app = agency
        .state
        .site(&d.client_id)?
        .map_or_else(|| d.client_id.clone(), |s| s.name);
    Ok(Some(Pending {
        code: display_code(&code),
        app,
        scopes: d.scopes,
    }))
}

/// Whether guessing codes from `source` is locked now.
pub fn guessing_locked(agency: &Agency, source: &str) -> Result<bool, NodeError> {
    let subject = ThrottleSubject::Source(source.to_string());
    Ok(agency.state.failures(&subject)?.locked_at(now_ms()))
}

/// Counts one wrong user code against `source`.
pub async fn record_wrong_code(agency: &Agency, typed: &str, source: &str) {
    let code = normalise_user_code(typed);
    let account = secret_hash(format!("device-code:{code}").as_bytes());
    super::sign_in::record_failure(agency, account, source.to_string()).await;
}

/// The user's decision on the device page.
pub enum Decided {
    /// Recorded; the app learns it at its next poll.
    Done,
    /// No pending grant has this code (counted against the source).
    WrongCode,
}

/// Records the user's decision for the grant the typed code names.
pub async fn decide(
    agency: &Agency,
    v: &ValidSession,
    typed: &str,
    approve: bool,
    source: &str,
) -> Result<Decided, NodeError> {
    let op = Op::DecideDevice {
        user_code: normalise_user_code(typed),
        session_key: v.key,
        approve,
    };
    match agency.write(op, None).await {
        Ok(Outcome::DeviceDecided(client)) => {
            tracing::info!(client = %client, approved = approve, sid = %v.session.sid, "device decision");
            agency
                .metrics
                .device_flow(if approve { "approved" } else { "denied" });
            Ok(Decided::Done)
        }
        Ok(_) => Err(NodeError::Internal("unexpected outcome".into())),
        Err(NodeError::Apply(e)) if e.code != ErrorCode::StorageError => {
            record_wrong_code(agency, typed, source).await;
            agency.metrics.device_flow("wrong_code");
            Ok(Decided::WrongCode)
        }
        Err(e) => Err(e),
    }
}

/// The command that polls the request's device grant (RFC 8628 §3.4): too
/// soon is answered here, without a write (§3.5).
pub(super) async fn poll(
    agency: &Agency,
    site: &Site,
    req: &TokenRequest,
    minted: &Minted,
) -> Result<Op, NodeError> {
    let device_hash = secret_hash(required(&req.device_code, "device_code")?.as_bytes());
    let unknown = "the device code is unknown or expired";
    let d = known(agency, unknown, |s| s.device(&device_hash)).await?;
    let interval_ms = d.interval_s.saturating_mul(1000);
    if d.last_poll_ms != 0 && now_ms() < d.last_poll_ms.saturating_add(interval_ms) {
        return Err(NodeError::BadRequest {
            code: ErrorCode::SlowDown,
            message: format!("poll at most every {} seconds", d.interval_s),
        });
    }
    Ok(Op::PollDevice {
        device_hash,
        client_id: site.client_id.clone(),
        token: Box::new(minted.access_record.clone()),
        refresh: Some(Box::new(minted.refresh_record.clone())),
    })
}
