//! The client load run during a schedule, every operation recorded in the
//! [`History`]. Session workers loop over a user's day: password sign-in
//! on one node, a ticket issued on another, the site redeeming it on a
//! third (sometimes on two nodes at once), a few refresh-token rotations,
//! sometimes a sign-out. An admin worker creates users, a writer sets
//! attributes of one counter user, a reader reads it linearizably. Each
//! worker has its own RNG seeded from the schedule's seed; the
//! interleaving is the machine's.
//!
//! Outcomes: a 2xx (303 for sign-in) that carries what was asked is `Ok`;
//! a 4xx, or a connection that could not be opened, is `Fail`; a 5xx, a
//! 408, a timeout or a connection lost mid-request is `Unknown`.

use std::collections::BTreeSet;
use std::time::Duration;

use baa_proto::api::{CreateUserRequest, UpdateUserRequest};
use baa_proto::command::Consistency;
use baa_proto::model::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::history::{Action, CodeRec, History, Outcome, RefreshRec, SessionRec, Value};
use crate::client::{AdminClient, ApiError};
use crate::sso::{Agent, AuthRequest, SsoCookies, TestSite};

/// The password of every load user.
pub const PASSWORD: &str = "correct horse battery";

/// The scopes the load asks for: a refresh token comes with every ticket.
pub const SCOPES: &str = "openid profile offline_access";

/// Per-request timeout of the load's clients: above the nodes'
/// `write_timeout_ms`, so that a write the node gave up on is answered.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after an operation that did not succeed, so that a node that is
/// down is not hammered.
pub(super) const BACKOFF: Duration = Duration::from_millis(100);

/// What the workers need to reach the cluster.
#[derive(Clone)]
pub struct Target {
    /// Public URL of each node, by node id.
    pub public: Vec<(NodeId, String)>,
    /// Admin client of each node.
    pub admin: Vec<AdminClient>,
    /// A cookie-less agent (cloned per session).
    pub agent: Agent,
    /// The partner site.
    pub site: TestSite,
    /// Users with [`PASSWORD`] who approved the site.
    pub users: Vec<String>,
    /// The user whose attributes the writer sets.
    pub counter: String,
    /// The schedule's seed.
    pub seed: u64,
}

impl Target {
    fn node(&self, rng: &mut StdRng) -> (NodeId, &str) {
        let (id, url) = &self.public[rng.gen_range(0..self.public.len())];
        (*id, url.as_str())
    }
    fn other_node(&self, rng: &mut StdRng, not: NodeId) -> (NodeId, &str) {
        let others: Vec<&(NodeId, String)> =
            self.public.iter().filter(|(id, _)| *id != not).collect();
        let (id, url) = others[rng.gen_range(0..others.len())];
        (*id, url.as_str())
    }
}

/// The running load.
pub struct Workload {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts `sessions` session workers, an admin worker, a writer and a reader.
    pub fn start(target: Target, history: History, sessions: usize) -> Workload {
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        let seed = target.seed;
        let rng = |w: usize| StdRng::seed_from_u64(seed.wrapping_mul(1_000).wrapping_add(w as u64));
        for w in 0..sessions {
            let (t, h, s, r) = (target.clone(), history.clone(), stop.subscribe(), rng(w));
            tasks.push(tokio::spawn(session_worker(w, t, h, s, r)));
        }
        let w = sessions;
        let (t, h, s, r) = (target.clone(), history.clone(), stop.subscribe(), rng(w));
        tasks.push(tokio::spawn(admin_worker(w, t, h, s, r)));
        let (t, h, s, r) = (
            target.clone(),
            history.clone(),
            stop.subscribe(),
            rng(w + 1),
        );
        tasks.push(tokio::spawn(writer(w + 1, t, h, s, r)));
        let (t, h, s, r) = (target, history, stop.subscribe(), rng(w + 2));
        tasks.push(tokio::spawn(reader(w + 2, t, h, s, r)));
        Workload { stop, tasks }
    }

    /// Asks every worker to stop after its current operation and waits.
    pub async fn finish(self) {
        stop_and_join(self.stop, self.tasks).await;
    }
}

/// Tells workers to stop after their current operation, waits for them,
/// and passes a worker's panic on.
pub(super) async fn stop_and_join(stop: watch::Sender<bool>, tasks: Vec<JoinHandle<()>>) {
    stop.send_replace(true);
    for t in tasks {
        if let Err(e) = t.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

pub(super) fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// The outcome of a request that got no answer.
pub fn transport(e: &reqwest::Error) -> Outcome {
    if e.is_connect() {
        Outcome::Fail(format!("not sent: {e}"))
    } else {
        Outcome::Unknown(format!("no answer: {e}"))
    }
}

/// The outcome of an answer that is not the success asked for.
pub fn by_status(status: StatusCode, body: &str) -> Outcome {
    let what = format!("HTTP {status}: {}", short(body));
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        Outcome::Unknown(what)
    } else {
        Outcome::Fail(what)
    }
}

/// The outcome of a failed admin request.
pub fn api_outcome(e: &ApiError) -> Outcome {
    match e {
        ApiError::Transport(t) => transport(t),
        ApiError::Status { status, raw, .. } => by_status(*status, raw),
    }
}

fn short(body: &str) -> String {
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.chars().take(160).collect()
}

async fn session_worker(
    w: usize,
    t: Target,
    h: History,
    stop: watch::Receiver<bool>,
    mut rng: StdRng,
) {
    while !stopped(&stop) {
        let user = t.users[rng.gen_range(0..t.users.len())].clone();
        let mut agent = t.agent.clone();
        agent.cookies.clear();
        let Some(session) = sign_in(w, &t, &h, &mut rng, &mut agent, &user).await else {
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        if let Some(code) = issue(w, &t, &h, &mut rng, &mut agent, session).await {
            let mut heir = if rng.gen_bool(0.25) {
                // The site redeems the same ticket on two nodes at once.
                let (a, _) = t.node(&mut rng);
                let (b, _) = t.other_node(&mut rng, a);
                let (x, y) = tokio::join!(
                    redeem(w, &t, &h, a, code, session),
                    redeem(w, &t, &h, b, code, session)
                );
                x.or(y)
            } else {
                let (a, _) = t.node(&mut rng);
                redeem(w, &t, &h, a, code, session).await
            };
            for _ in 0..rng.gen_range(0..=4) {
                let Some(token) = heir else { break };
                if stopped(&stop) {
                    break;
                }
                let (a, _) = t.node(&mut rng);
                heir = match refresh(w, &t, &h, a, token, session, code).await {
                    Ok(next) => Some(next),
                    Err(true) => {
                        // Unknown: the same token once more elsewhere. If
                        // the first rotation happened, this is a reuse.
                        let (b, _) = t.other_node(&mut rng, a);
                        let _ = refresh(w, &t, &h, b, token, session, code).await;
                        None
                    }
                    Err(false) => None,
                };
            }
        }
        if rng.gen_bool(0.5) && !stopped(&stop) {
            let (node, base) = t.node(&mut rng);
            let base = base.to_string();
            logout(w, node, &base, &h, &mut agent, Action::Logout { session }).await;
        }
    }
}

async fn sign_in(
    w: usize,
    t: &Target,
    h: &History,
    rng: &mut StdRng,
    agent: &mut Agent,
    user: &str,
) -> Option<usize> {
    let (node, base) = t.node(rng);
    let p = h.invoke(w, node, Action::SignIn { user: user.into() });
    match password_sign_in(agent, base, user).await {
        Ok(cookies) => {
            let s = h.add_session(SessionRec {
                user: user.into(),
                cookies,
            });
            h.complete(p, Outcome::Ok(Value::Session(s)));
            Some(s)
        }
        Err(outcome) => {
            h.complete(p, outcome);
            None
        }
    }
}

/// A password sign-in of `user` at `base` by `agent`: its agency cookies,
/// or how it did not complete.
pub(super) async fn password_sign_in(
    agent: &mut Agent,
    base: &str,
    user: &str,
) -> Result<SsoCookies, Outcome> {
    let url = format!("{base}/sso/signin");
    let page = match agent.try_get(&url).await {
        Ok(a) if a.status == StatusCode::OK => a,
        Ok(a) => return Err(Outcome::Fail(format!("sign-in page: HTTP {}", a.status))),
        Err(e) => return Err(Outcome::Fail(format!("sign-in page: {e}"))),
    };
    let Some(csrf) = page.inputs().get("csrf").cloned() else {
        return Err(Outcome::Fail("sign-in page without csrf".into()));
    };
    let fields = [
        ("csrf".to_string(), csrf),
        ("username".to_string(), user.to_string()),
        ("password".to_string(), PASSWORD.to_string()),
    ];
    match agent.try_post_form(&url, &fields).await {
        Ok(a) if a.status == StatusCode::SEE_OTHER => agent
            .sso_cookies()
            .ok_or_else(|| Outcome::Unknown("303 without both cookies".into())),
        Ok(a) => Err(by_status(a.status, &a.body)),
        Err(e) => Err(transport(&e)),
    }
}

async fn issue(
    w: usize,
    t: &Target,
    h: &History,
    rng: &mut StdRng,
    agent: &mut Agent,
    session: usize,
) -> Option<usize> {
    let (node, base) = t.node(rng);
    let req = AuthRequest::new(&t.site).set("scope", SCOPES);
    let p = h.invoke(w, node, Action::Issue { session });
    match agent.try_get(&req.url(base)).await {
        Ok(a) => match (a.status, a.inputs().get("code")) {
            (StatusCode::OK, Some(code)) => {
                let c = h.add_code(CodeRec {
                    session,
                    code: code.clone(),
                    verifier: req.verifier.clone().unwrap_or_default(),
                });
                h.complete(p, Outcome::Ok(Value::Code(c)));
                Some(c)
            }
            (StatusCode::OK, None) => {
                let why = if a.body.contains("id=\"trust\"") {
                    "trust page"
                } else {
                    "no ticket (the session is not valid here)"
                };
                h.complete(p, Outcome::Fail(why.into()));
                None
            }
            (status, _) => {
                h.complete(p, by_status(status, &a.body));
                None
            }
        },
        Err(e) => {
            h.complete(p, transport(&e));
            None
        }
    }
}

/// A token-endpoint call as the site; `Ok` with the JSON of a 200.
async fn token_call(
    t: &Target,
    node: NodeId,
    form: &[(&str, &str)],
) -> Result<serde_json::Value, Outcome> {
    let base = t
        .public
        .iter()
        .find(|(id, _)| *id == node)
        .map(|(_, u)| u.as_str())
        .unwrap_or_default();
    let mut req = t.agent.http().post(format!("{base}/sso/token"));
    if let Some(secret) = &t.site.secret {
        req = req.basic_auth(&t.site.client_id, Some(secret));
    }
    let resp = req.form(form).send().await.map_err(|e| transport(&e))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| Outcome::Unknown(format!("answer cut short: {e}")))?;
    if status != StatusCode::OK {
        return Err(by_status(status, &body));
    }
    serde_json::from_str(&body).map_err(|e| Outcome::Unknown(format!("bad JSON: {e}")))
}

/// The refresh token of a token response, kept; `Err` if there is none.
fn keep_refresh(
    h: &History,
    json: &serde_json::Value,
    session: usize,
    code: usize,
    parent: Option<usize>,
) -> Result<usize, Outcome> {
    match json["refresh_token"].as_str() {
        Some(token) => Ok(h.add_refresh(RefreshRec {
            session,
            code,
            parent,
            token: token.into(),
        })),
        None => Err(Outcome::Unknown(format!(
            "200 without refresh_token: {json}"
        ))),
    }
}

/// Redeems ticket `code` on `node` as the site; the refresh token it got.
async fn redeem(
    w: usize,
    t: &Target,
    h: &History,
    node: NodeId,
    code: usize,
    session: usize,
) -> Option<usize> {
    let CodeRec {
        code: ticket,
        verifier,
        ..
    } = h.code(code)?;
    let p = h.invoke(w, node, Action::Redeem { code });
    let form = [
        ("grant_type", "authorization_code"),
        ("code", ticket.as_str()),
        ("redirect_uri", t.site.redirect_uri.as_str()),
        ("code_verifier", verifier.as_str()),
    ];
    let got = token_call(t, node, &form)
        .await
        .and_then(|json| keep_refresh(h, &json, session, code, None));
    match got {
        Ok(r) => {
            h.complete(p, Outcome::Ok(Value::Refresh(r)));
            Some(r)
        }
        Err(o) => {
            h.complete(p, o);
            None
        }
    }
}

/// Rotates refresh token `token` on `node`: `Ok(heir)`, or `Err(unknown?)`.
pub(super) async fn refresh(
    w: usize,
    t: &Target,
    h: &History,
    node: NodeId,
    token: usize,
    session: usize,
    code: usize,
) -> Result<usize, bool> {
    let secret = h.refresh(token).ok_or(false)?.token;
    let p = h.invoke(w, node, Action::Refresh { token });
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", secret.as_str()),
    ];
    let got = token_call(t, node, &form)
        .await
        .and_then(|json| keep_refresh(h, &json, session, code, Some(token)));
    match got {
        Ok(r) => {
            h.complete(p, Outcome::Ok(Value::Refresh(r)));
            Ok(r)
        }
        Err(o) => {
            let unknown = matches!(o, Outcome::Unknown(_));
            h.complete(p, o);
            Err(unknown)
        }
    }
}

/// The sign-out (`action`) of `agent`'s session at `base`.
pub(super) async fn logout(
    w: usize,
    node: NodeId,
    base: &str,
    h: &History,
    agent: &mut Agent,
    action: Action,
) {
    let p = h.invoke(w, node, action);
    let url = format!("{base}/sso/logout");
    let page = match agent.try_get(&url).await {
        Ok(a) if a.status == StatusCode::OK => a,
        Ok(a) => {
            h.complete(
                p,
                Outcome::Fail(format!("sign-out page: HTTP {}", a.status)),
            );
            return;
        }
        Err(e) => {
            h.complete(p, Outcome::Fail(format!("sign-out page: {e}")));
            return;
        }
    };
    let fields: Vec<(String, String)> = page.inputs().into_iter().collect();
    let outcome = match agent.try_post_form(&url, &fields).await {
        Ok(a) if a.status == StatusCode::OK => Outcome::Ok(Value::None),
        Ok(a) => by_status(a.status, &a.body),
        Err(e) => transport(&e),
    };
    h.complete(p, outcome);
}

/// Sends an admin write, retrying an unknown outcome on the next nodes with
/// the same request id (each attempt its own operation); whether it was
/// acknowledged.
async fn admin_write<F, Fut>(
    w: usize,
    t: &Target,
    h: &History,
    rng: &mut StdRng,
    action: Action,
    send: F,
) -> bool
where
    F: Fn(AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<baa_proto::api::UserView, ApiError>>,
{
    let first = rng.gen_range(0..t.admin.len());
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(BACKOFF).await;
        }
        let admin = t.admin[(first + attempt) % t.admin.len()].clone();
        let p = h.invoke(w, admin.node(), action.clone());
        let outcome = match send(admin).await {
            Ok(_) => Outcome::Ok(Value::None),
            Err(e) => api_outcome(&e),
        };
        let done = match outcome {
            Outcome::Ok(_) => Some(true),
            Outcome::Fail(_) => Some(false),
            Outcome::Unknown(_) => None,
        };
        h.complete(p, outcome);
        if let Some(ok) = done {
            return ok;
        }
    }
    false
}

async fn admin_worker(
    w: usize,
    t: Target,
    h: History,
    stop: watch::Receiver<bool>,
    mut rng: StdRng,
) {
    let mut k = 0u64;
    while !stopped(&stop) {
        k += 1;
        let name = format!("made-{k}");
        let rid = format!("create-{}-{k}", t.seed);
        let req = CreateUserRequest {
            username: name.clone(),
            ..Default::default()
        };
        let action = Action::CreateUser { name };
        let ok = admin_write(w, &t, &h, &mut rng, action, |admin| {
            let (req, rid) = (req.clone(), rid.clone());
            async move { admin.create_user(&req, Some(&rid)).await }
        })
        .await;
        let pause = if ok { 50 } else { BACKOFF.as_millis() as u64 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

async fn writer(w: usize, t: Target, h: History, stop: watch::Receiver<bool>, mut rng: StdRng) {
    let mut k = 0u64;
    while !stopped(&stop) {
        k += 1;
        let key = format!("a{k}");
        let rid = format!("write-{}-{k}", t.seed);
        let req = UpdateUserRequest {
            attributes: [(key.clone(), Some(k.to_string()))].into(),
            ..Default::default()
        };
        let counter = t.counter.clone();
        let action = Action::Write { key };
        let ok = admin_write(w, &t, &h, &mut rng, action, |admin| {
            let (req, rid, counter) = (req.clone(), rid.clone(), counter.clone());
            async move { admin.update_user(&counter, &req, Some(&rid)).await }
        })
        .await;
        if !ok {
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

async fn reader(w: usize, t: Target, h: History, stop: watch::Receiver<bool>, mut rng: StdRng) {
    while !stopped(&stop) {
        let admin = &t.admin[rng.gen_range(0..t.admin.len())];
        let p = h.invoke(w, admin.node(), Action::Read);
        let outcome = match admin.get_user(&t.counter, Consistency::Linearizable).await {
            Ok(view) => Outcome::Ok(Value::Read {
                revision: view.revision,
                keys: view.attributes.keys().cloned().collect::<BTreeSet<_>>(),
            }),
            Err(e) => api_outcome(&e),
        };
        let pause = !matches!(outcome, Outcome::Ok(_));
        h.complete(p, outcome);
        if pause {
            tokio::time::sleep(BACKOFF).await;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
