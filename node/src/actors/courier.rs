//! The courier: on the leader, delivers the back-channel logouts of the
//! replicated outbox (OIDC Back-Channel Logout 1.0) — to partner sites, and
//! to peer agencies that derived a session from one of ours — retrying with
//! backoff, and removes each item once delivered or given up on. A leader
//! that dies with deliveries pending leaves them in the outbox for the next
//! one, so no delivery is lost (a site may hear of a logout twice, which
//! the protocol allows).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorFutureExt, AsyncContext, Context, WrapFuture};
use baa_proto::command::Op;
use baa_proto::sso::{pairwise_sub, subject, OutboxItem};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::agency::Agency;
use crate::clock::now_ms;
use crate::metrics::Delivery;

/// How often the leader looks at the outbox.
pub const COURIER_INTERVAL: Duration = Duration::from_millis(200);

/// Items looked at per round.
const BATCH: usize = 256;

/// Attempts per item before it is given up on, and the first retry's wait
/// (doubling, at most [`MAX_WAIT`]).
const ATTEMPTS: u32 = 10;
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Delivers the outbox while this node leads.
pub struct Courier {
    agency: Arc<Agency>,
    sites: Option<reqwest::Client>,
    /// Failed attempts so far, and when the next may start.
    tries: HashMap<u64, (u32, Instant)>,
    /// Items being delivered, or delivered and not yet removed.
    busy: HashSet<u64>,
    /// Items to remove from the outbox.
    done: Vec<u64>,
}

impl Courier {
    /// A courier for `agency`.
    pub fn new(agency: Arc<Agency>) -> Self {
        Self {
            agency,
            sites: None,
            tries: HashMap::new(),
            busy: HashSet::new(),
            done: Vec::new(),
        }
    }

    fn round(&mut self, ctx: &mut Context<Self>) {
        let agency = self.agency.clone();
        if agency.leader().map(|(id, _)| id) != Some(agency.id) {
            self.tries.clear();
            self.busy.clear();
            self.done.clear();
            return;
        }
        if !self.done.is_empty() {
            let ids = std::mem::take(&mut self.done);
            let a = agency.clone();
            actix::spawn(async move {
                if let Err(e) = a.write(Op::CompleteDeliveries { ids }, None).await {
                    // They stay in the outbox and go out again: harmless.
                    tracing::warn!(error = %e, "courier: removing delivered items failed");
                }
            });
        }
        let items = match agency.state.outbox(BATCH) {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(error = %e, "courier: reading the outbox failed");
                return;
            }
        };
        agency.metrics.outbox_items.set(items.len() as i64);
        if items.len() < BATCH {
            let present: HashSet<u64> = items.iter().map(|i| i.id).collect();
            self.busy.retain(|id| present.contains(id));
            self.tries.retain(|id, _| present.contains(id));
        }
        if self.sites.is_none() {
            match agency.partner_client() {
                Ok(b) => self.sites = b.timeout(Duration::from_secs(5)).build().ok(),
                Err(e) => tracing::warn!(error = %e, "courier: no client for sites"),
            }
        }
        let Some(sites) = self.sites.clone() else {
            return;
        };
        let now = Instant::now();
        for item in items {
            let due = self.tries.get(&item.id).is_none_or(|(_, at)| *at <= now);
            if !due || !self.busy.insert(item.id) {
                continue;
            }
            let (a, client) = (agency.clone(), sites.clone());
            let send = async move {
                let r = deliver(&a, &client, &item).await;
                (item, r)
            };
            ctx.spawn(
                send.into_actor(self)
                    .map(|(item, r), act, _| act.record(item, r)),
            );
        }
    }

    fn record(&mut self, item: OutboxItem, result: Result<(), String>) {
        let m = &self.agency.metrics;
        match result {
            Ok(()) => {
                m.backchannel_logout(Delivery::Ok);
                self.done.push(item.id);
            }
            Err(e) => {
                let tries = self.tries.entry(item.id).or_insert((0, Instant::now()));
                tries.0 += 1;
                tracing::warn!(site = %item.client_id, attempt = tries.0, error = %e, "back-channel logout not delivered");
                if tries.0 >= ATTEMPTS {
                    m.backchannel_logout(Delivery::Failed);
                    self.done.push(item.id);
                    return;
                }
                m.backchannel_logout(Delivery::Retried);
                let wait = FIRST_RETRY
                    .saturating_mul(1 << (tries.0 - 1).min(16))
                    .min(MAX_WAIT);
                tries.1 = Instant::now() + wait;
                self.busy.remove(&item.id);
            }
        }
    }
}

impl Actor for Courier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(COURIER_INTERVAL, |act, ctx| act.round(ctx));
    }
}

/// Delivers one item: a logout token naming the session, signed now, to
/// the site's (or peer's) back-channel URI. A site that is gone, or no
/// longer takes logouts, has nothing to hear.
async fn deliver(
    agency: &Agency,
    sites: &reqwest::Client,
    item: &OutboxItem,
) -> Result<(), String> {
    let st = &agency.state;
    let err = |e: crate::raft::StorageError| e.to_string();
    let Some(site) = st.site(&item.client_id).map_err(err)? else {
        return Ok(());
    };
    let Some(uri) = site.backchannel_logout_uri else {
        return Ok(());
    };
    let peer = st.peer_of_client(&item.client_id).map_err(err)?.is_some();
    let salt = crate::key_rotation::stored_pairwise_salt(agency).map_err(|e| e.to_string())?;
    let user = st.user_by_id(item.user_id).map_err(err)?;
    // The subject as this site knows it (a pseudonym's pairwise `sub`; a
    // peer always gets a pairwise one).
    let sub = match (&salt, &user) {
        (Some(salt), _) if peer => pairwise_sub(salt, item.user_id, &item.client_id),
        (Some(salt), Some(user)) => {
            let params = st
                .trust(item.user_id, &item.client_id)
                .map_err(err)?
                .map(|t| t.params)
                .unwrap_or_default();
            subject(salt, user, &item.client_id, &params).0
        }
        _ => item.user_id.to_string(),
    };
    let now_s = now_ms() / 1000;
    let claims = serde_json::json!({
        "iss": agency.config.issuer,
        "aud": item.client_id,
        "iat": now_s,
        "exp": now_s + 300,
        "jti": URL_SAFE_NO_PAD.encode(crate::secrets::random_bytes::<16>()),
        "sub": sub,
        "sid": item.sid,
        "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
    });
    let token = agency
        .keys
        .sign_jwt(&claims, crate::keys::LOGOUT_TOKEN_TYP)
        .map_err(|e| e.to_string())?;
    let client = match peer {
        true => agency
            .peers
            .client(&agency.config.federation)
            .map_err(|e| e.to_string())?,
        false => sites.clone(),
    };
    let resp = client
        .post(&uri)
        .form(&[("logout_token", token.as_str())])
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    match resp.status() {
        s if s.is_success() => Ok(()),
        s => Err(format!("HTTP {s}")),
    }
}
