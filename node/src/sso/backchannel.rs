//! The back-channel logout sender (OIDC Back-Channel Logout 1.0): when a
//! session ends, every site that got a ticket in it receives a signed logout
//! token naming the session, with retries; and the one HTTP client setup for
//! calls to partner sites and upstream apps.

use std::sync::Arc;
use std::time::Duration;

use baa_proto::sso::{subject, RevokedSession};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::agency::Agency;
use crate::clock::now_ms;
use crate::metrics::Delivery;

/// Sends OIDC back-channel logout tokens to partner sites, with retries.
#[derive(Clone)]
pub struct Backchannel {
    client: reqwest::Client,
}

/// An HTTP client builder for calls to partner sites and upstream apps:
/// trusts the roots of `[sso] partner_ca_file` (never the cluster CA),
/// follows no redirects.
pub fn partner_client(agency: &Agency) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .redirect(reqwest::redirect::Policy::none());
    for f in agency.config.sso.partner_ca_file.iter() {
        let pem = std::fs::read(f)?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
            b = b.add_root_certificate(cert);
        }
    }
    Ok(b)
}

/// Attempts per site, and the wait before the first retry (doubling).
const BACKCHANNEL_ATTEMPTS: u32 = 4;
const BACKCHANNEL_FIRST_RETRY: Duration = Duration::from_millis(500);

impl Backchannel {
    /// A sender trusting the agency's CA and the configured partner CA.
    pub fn new(agency: &Agency) -> anyhow::Result<Self> {
        let b = partner_client(agency)?.timeout(Duration::from_secs(5));
        Ok(Self { client: b.build()? })
    }

    /// Tells every site that got a ticket in the revoked session, in the background.
    pub fn notify(&self, agency: Arc<Agency>, r: RevokedSession) {
        // Best effort in the background, but a storage error is said.
        let read = |what: &str, e: crate::raft::StorageError| {
            tracing::error!(error = %e, sid = %r.sid, "back-channel logout: reading {what} failed");
        };
        let salt = agency.state.pairwise_salt().unwrap_or_else(|e| {
            read("the pairwise salt", e);
            None
        });
        let user = agency.state.user_by_id(r.user_id).unwrap_or_else(|e| {
            read("the user", e);
            None
        });
        for client_id in &r.sites {
            let site = agency.state.site(client_id).unwrap_or_else(|e| {
                read("a site", e);
                None
            });
            let Some(uri) = site.and_then(|s| s.backchannel_logout_uri) else {
                continue;
            };
            // The subject as this site knows it (a pseudonym's pairwise `sub`).
            let trust = agency
                .state
                .trust(r.user_id, client_id)
                .unwrap_or_else(|e| {
                    read("the trust relationship", e);
                    None
                });
            let params = trust.map(|t| t.params).unwrap_or_default();
            let client_id = client_id.clone();
            let sub = match (&salt, &user) {
                (Some(salt), Some(user)) => subject(salt, user, &client_id, &params).0,
                _ => r.user_id.to_string(),
            };
            let jti = crate::secrets::random_bytes::<16>();
            let now_s = now_ms() / 1000;
            let claims = serde_json::json!({
                "iss": agency.config.issuer,
                "aud": client_id,
                "iat": now_s,
                "exp": now_s + 300,
                "jti": URL_SAFE_NO_PAD.encode(jti),
                "sub": sub,
                "sid": r.sid,
                "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
            });
            let token = match agency.keys.sign_jwt(&claims, crate::keys::LOGOUT_TOKEN_TYP) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot sign a logout token");
                    continue;
                }
            };
            let client = self.client.clone();
            let agency = agency.clone();
            actix_rt::spawn(async move {
                let mut wait = BACKCHANNEL_FIRST_RETRY;
                for attempt in 1..=BACKCHANNEL_ATTEMPTS {
                    let sent = client
                        .post(&uri)
                        .form(&[("logout_token", token.as_str())])
                        .send()
                        .await;
                    match sent {
                        Ok(resp) if resp.status().is_success() => {
                            agency.metrics.backchannel_logout(Delivery::Ok);
                            return;
                        }
                        Ok(resp) => {
                            tracing::warn!(site = %client_id, attempt, status = %resp.status(), "back-channel logout refused")
                        }
                        Err(e) => {
                            tracing::warn!(site = %client_id, attempt, error = %e, "back-channel logout failed")
                        }
                    }
                    if attempt < BACKCHANNEL_ATTEMPTS {
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
                agency.metrics.backchannel_logout(Delivery::Failed);
            });
        }
    }
}
