//! Sessions for non-browser apps: the device authorization endpoint and the
//! device page (RFC 8628). Apps use the token they get at the gateway and at
//! forward-auth apps (`http::gateway`, `http::forward_auth`).

use actix::Addr;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use baa_proto::command::{Op, Outcome};
use baa_proto::sso::{
    normalise_user_code, secret_hash, DeviceGrant, DeviceStatus, ThrottleSubject,
};
use baa_proto::ErrorCode;
use rand::Rng;
use serde::Deserialize;

use super::oidc::{authenticate_client, ClientAuthForm};
use super::pages::{self, Csp};
use super::sso::{
    client_source, csrf_ok, csrf_refused, csrf_token, current_session, error_page, sign_in_page,
    with_cookie, AuthParams,
};
use crate::actors::session_gate::SessionGate;
use crate::actors::ticket_issuer::random_secret;
use crate::agency::{now_ms, Agency};
use crate::error::NodeError;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/sso/device_authorization").route(web::post().to(device_authorization)),
    )
    .service(
        super::resource("/device")
            .route(web::get().to(device_get))
            .route(web::post().to(device_post)),
    )
    .service(super::resource("/device/decide").route(web::post().to(device_decide)));
}

/// Letters of user codes: no vowels (no words), no look-alikes.
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

fn new_user_code() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..8)
        .map(|_| USER_CODE_ALPHABET[rng.gen_range(0..USER_CODE_ALPHABET.len())] as char)
        .collect()
}

/// Shows a user code as people read it: `BCDF-GHJK`.
fn display_code(code: &str) -> String {
    if code.len() == 8 {
        format!("{}-{}", &code[..4], &code[4..])
    } else {
        code.to_string()
    }
}

#[derive(Debug, Deserialize)]
struct DeviceAuthForm {
    scope: Option<String>,
    #[serde(flatten)]
    client: ClientAuthForm,
}

async fn device_authorization(
    req: HttpRequest,
    agency: web::Data<Agency>,
    form: web::Form<DeviceAuthForm>,
) -> Result<HttpResponse, super::error::OAuthError> {
    let site = authenticate_client(&agency, &req, &form.client).await?;
    // Anyone may start a device grant for a public client: each is a write,
    // so they are limited per address and per client here, and capped
    // cluster-wide by the state machine.
    agency
        .limits
        .device_per_source
        .check(&super::sso::client_source(&req, &agency))?;
    agency.limits.device_per_client.check(&site.client_id)?;
    if agency.state.device_grants().map_err(NodeError::from)?
        >= crate::raft::state_machine::MAX_DEVICE_GRANTS
    {
        return Err(NodeError::Busy.into());
    }
    let scopes: Vec<String> = form
        .scope
        .as_deref()
        .unwrap_or("openid")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if let Some(s) = scopes.iter().find(|s| !site.allowed_scopes.contains(s)) {
        return Err(NodeError::BadRequest {
            code: ErrorCode::InvalidScope,
            message: format!("scope {s} is not allowed for this client"),
        }
        .into());
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
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({
            "device_code": device_code,
            "user_code": display_code(&user_code),
            "verification_uri": uri,
            "verification_uri_complete": format!("{uri}?user_code={}", display_code(&user_code)),
            "expires_in": sso.device_code_ttl_s,
            "interval": sso.device_poll_interval_s,
        })))
}

#[derive(Debug, Default, Deserialize)]
struct DeviceQuery {
    user_code: Option<String>,
}

fn page(status: StatusCode, body: impl FnOnce(&Csp) -> maud::Markup) -> HttpResponse {
    let csp = Csp::new(Vec::new());
    let markup = body(&csp);
    pages::html_response(status, markup, &csp)
}

/// The device page for `code` as typed: the confirmation when it names a
/// pending request, else the entry form with `error`.
fn device_page(
    agency: &Agency,
    req: &HttpRequest,
    typed: &str,
    error: Option<&str>,
) -> HttpResponse {
    let (csrf, cookie) = csrf_token(req);
    let code = normalise_user_code(typed);
    let pending = agency
        .state
        .device_by_user_code(&code)
        .ok()
        .flatten()
        .filter(|d| d.status == DeviceStatus::Pending && now_ms() < d.expires_ms);
    let resp = match (pending, error) {
        (Some(d), None) => {
            let name = agency
                .state
                .site(&d.client_id)
                .ok()
                .flatten()
                .map_or_else(|| d.client_id.clone(), |s| s.name);
            agency
                .metrics
                .pages
                .with_label_values(&["device_confirm"])
                .inc();
            page(StatusCode::OK, |csp| {
                pages::device_confirm(csp, &csrf, &display_code(&code), &name, &d.scopes)
            })
        }
        _ => {
            agency.metrics.pages.with_label_values(&["device"]).inc();
            let status = if error.is_some() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            page(status, |csp| pages::device_entry(csp, &csrf, typed, error))
        }
    };
    with_cookie(resp, cookie)
}

async fn device_get(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<SessionGate>>,
    query: web::Query<DeviceQuery>,
) -> HttpResponse {
    let typed = query.user_code.clone().unwrap_or_default();
    if current_session(&req, &gate, &agency).await.is_none() {
        let path = match &query.user_code {
            Some(c) => format!("/device?user_code={}", normalise_user_code(c)),
            None => "/device".into(),
        };
        return sign_in_first(&req, &agency, &path, StatusCode::OK);
    }
    device_page(&agency, &req, &typed, None)
}

/// The sign-in page, continuing at the device page `path` afterwards.
fn sign_in_first(
    req: &HttpRequest,
    agency: &Agency,
    path: &str,
    status: StatusCode,
) -> HttpResponse {
    sign_in_page(
        req,
        agency,
        &AuthParams::continue_to(path),
        Some("a device"),
        "",
        None,
        status,
    )
}

#[derive(Debug, Deserialize)]
struct DeviceForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    user_code: String,
    #[serde(default)]
    decision: String,
}

const BAD_CODE: &str = "That code is not valid or has expired. Check it and try again.";

async fn device_post(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<SessionGate>>,
    form: web::Form<DeviceForm>,
) -> HttpResponse {
    if !csrf_ok(&req, &form.csrf) {
        return csrf_refused(&agency);
    }
    if current_session(&req, &gate, &agency).await.is_none() {
        return sign_in_first(&req, &agency, "/device", StatusCode::UNAUTHORIZED);
    }
    if let Some(refused) = code_guessing_locked(&agency, &req, &form.user_code) {
        return refused;
    }
    let code = normalise_user_code(&form.user_code);
    let valid = agency
        .state
        .device_by_user_code(&code)
        .ok()
        .flatten()
        .is_some_and(|d| d.status == DeviceStatus::Pending && now_ms() < d.expires_ms);
    if !valid {
        record_wrong_code(&agency, &req, &code).await;
        return device_page(&agency, &req, &form.user_code, Some(BAD_CODE));
    }
    device_page(&agency, &req, &form.user_code, None)
}

/// Guessing user codes is throttled like guessing passwords, per source
/// address, on the entry page and the decision alike: the 429 page while
/// the source is locked.
fn code_guessing_locked(agency: &Agency, req: &HttpRequest, typed: &str) -> Option<HttpResponse> {
    let locked = agency
        .state
        .failures(&ThrottleSubject::Source(client_source(req, agency)))
        .map(|f| f.locked_at(now_ms()))
        .unwrap_or(false);
    locked.then(|| {
        let mut resp = device_page(
            agency,
            req,
            typed,
            Some("Too many wrong codes. Wait a few minutes, then try again."),
        );
        *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        resp
    })
}

/// Counts one wrong user code against the request's source address.
async fn record_wrong_code(agency: &Agency, req: &HttpRequest, code: &str) {
    let op = Op::RecordFailedSignIn {
        account: secret_hash(format!("device-code:{code}").as_bytes()),
        source: client_source(req, agency),
        policy: super::sso::throttle_policy(agency),
    };
    if let Err(e) = agency.write(op, None).await {
        tracing::warn!(error = %e, "could not record a wrong device code");
    }
}

async fn device_decide(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<SessionGate>>,
    form: web::Form<DeviceForm>,
) -> HttpResponse {
    if !csrf_ok(&req, &form.csrf) {
        return csrf_refused(&agency);
    }
    let Some(v) = current_session(&req, &gate, &agency).await else {
        return sign_in_first(&req, &agency, "/device", StatusCode::UNAUTHORIZED);
    };
    if let Some(refused) = code_guessing_locked(&agency, &req, &form.user_code) {
        return refused;
    }
    let approve = form.decision == "approve";
    let code = normalise_user_code(&form.user_code);
    let op = Op::DecideDevice {
        user_code: code.clone(),
        session_key: v.key,
        approve,
    };
    match agency.write(op, None).await {
        Ok(Outcome::DeviceDecided(client)) => {
            tracing::info!(client = %client, approved = approve, sid = %v.session.sid, "device decision");
            page(StatusCode::OK, |csp| pages::device_done(csp, approve))
        }
        Ok(_) => error_page(
            &agency,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Unexpected outcome.",
        ),
        Err(NodeError::Apply(e)) if e.code != ErrorCode::StorageError => {
            record_wrong_code(&agency, &req, &code).await;
            device_page(&agency, &req, &form.user_code, Some(BAD_CODE))
        }
        Err(e) => error_page(
            &agency,
            super::error::status_of(e.code()),
            e.code().as_str(),
            &e.to_string(),
        ),
    }
}
