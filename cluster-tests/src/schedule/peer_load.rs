//! The cross-agency part of a federated schedule's load: workers that sign
//! in at agency B with a password, then at A through the silent round trip
//! to B (a session A derives from B's), once or twice, and half the time
//! sign out at B — which must end the derived sessions at A too. Every
//! operation is recorded in the same [`History`] as A's own load.
//!
//! A cross-agency sign-in is `Ok` when A's callback answers 303 with a
//! session cookie; anything that goes wrong before the callback is `Fail`
//! (only the callback makes a session); the callback's own answer is
//! classified as every other operation's.

use baa_proto::model::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::history::{Action, DerivedRec, History, Outcome, SessionRec, Value};
use super::workload::{
    by_status, logout, password_sign_in, stop_and_join, stopped, transport, BACKOFF,
};
use crate::bench::{csrf_pair, set_cookie};
use crate::federation::{deliver, round_trip};
use crate::sso::{Agent, REFERENCE_COOKIE, SESSION_COOKIE};

/// Worker numbers of the cross-agency load start here (A's load uses the
/// first few).
const FIRST_WORKER: usize = 100;

/// What the cross-agency workers need.
#[derive(Clone)]
pub struct PeerTarget {
    /// A's nodes' public URLs.
    pub a: Vec<(NodeId, String)>,
    /// B's nodes' public URLs.
    pub b: Vec<(NodeId, String)>,
    /// A cookie-less agent that trusts B's CA (cloned per session).
    pub agent: Agent,
    /// A client that trusts both agencies' CAs, for the round trip.
    pub http: reqwest::Client,
    /// B's users (password [`super::workload::PASSWORD`]).
    pub users: Vec<String>,
    /// The authorization request of a site of A (response mode `query`).
    pub query: String,
    /// The schedule's seed.
    pub seed: u64,
}

fn pick(nodes: &[(NodeId, String)], rng: &mut StdRng) -> (NodeId, String) {
    nodes[rng.gen_range(0..nodes.len())].clone()
}

/// The running cross-agency load.
pub struct PeerLoad {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl PeerLoad {
    /// Starts `workers` cross-agency workers.
    pub fn start(target: PeerTarget, history: History, workers: usize) -> PeerLoad {
        let (stop, _) = watch::channel(false);
        let tasks = (0..workers)
            .map(|i| {
                let w = FIRST_WORKER + i;
                let rng =
                    StdRng::seed_from_u64(target.seed.wrapping_mul(1_000).wrapping_add(w as u64));
                let (t, h, s) = (target.clone(), history.clone(), stop.subscribe());
                tokio::spawn(peer_worker(w, t, h, s, rng))
            })
            .collect();
        PeerLoad { stop, tasks }
    }

    /// Asks every worker to stop after its current operation and waits.
    pub async fn finish(self) {
        stop_and_join(self.stop, self.tasks).await;
    }
}

async fn peer_worker(
    w: usize,
    t: PeerTarget,
    h: History,
    stop: watch::Receiver<bool>,
    mut rng: StdRng,
) {
    while !stopped(&stop) {
        let user = t.users[rng.gen_range(0..t.users.len())].clone();
        let mut agent = t.agent.clone();
        agent.cookies.clear();
        let (node, base) = pick(&t.b, &mut rng);
        let p = h.invoke(w, node, Action::PeerSignIn { user: user.clone() });
        let (session, cookies) = match password_sign_in(&mut agent, &base, &user).await {
            Ok(cookies) => {
                let s = h.add_peer_session(SessionRec {
                    user,
                    cookies: cookies.clone(),
                });
                h.complete(p, Outcome::Ok(Value::PeerSession(s)));
                (s, cookies.header())
            }
            Err(outcome) => {
                h.complete(p, outcome);
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        for _ in 0..rng.gen_range(1..=2) {
            if stopped(&stop) {
                break;
            }
            if !cross_sign_in(w, &t, &h, &mut rng, session, &cookies).await {
                tokio::time::sleep(BACKOFF).await;
            }
        }
        if rng.gen_bool(0.5) && !stopped(&stop) {
            let (node, base) = pick(&t.b, &mut rng);
            let action = Action::PeerLogout {
                peer_session: session,
            };
            logout(w, node, &base, &h, &mut agent, action).await;
        }
    }
}

/// One sign-in at a node of A through the round trip to a node of B, with
/// B's session `session` (`cookies`); whether it made a session.
async fn cross_sign_in(
    w: usize,
    t: &PeerTarget,
    h: &History,
    rng: &mut StdRng,
    session: usize,
    cookies: &str,
) -> bool {
    let (node, a) = pick(&t.a, rng);
    let (_, b) = pick(&t.b, rng);
    let p = h.invoke(
        w,
        node,
        Action::CrossSignIn {
            peer_session: session,
        },
    );
    let started = async {
        let csrf = csrf_pair(&t.http, &a).await?;
        round_trip(&t.http, &a, &b, cookies, &csrf, &t.query).await
    };
    let answered = match started.await {
        Ok(answered) => answered,
        Err(e) => {
            h.complete(p, Outcome::Fail(format!("before A's callback: {e:#}")));
            return false;
        }
    };
    let resp = deliver(
        &t.http,
        &answered.callback,
        Some(&answered.trip),
        &answered.fields,
    )
    .await;
    let outcome = match resp {
        Ok(resp) if resp.status() == StatusCode::SEE_OTHER => {
            match set_cookie(&resp, SESSION_COOKIE) {
                Some(s) => {
                    let d = h.add_derived(DerivedRec {
                        peer_session: session,
                        cookies: format!(
                            "{SESSION_COOKIE}={s}; {REFERENCE_COOKIE}={}",
                            answered.reference
                        ),
                    });
                    Outcome::Ok(Value::Derived(d))
                }
                // A session is made only with its cookie in the same answer.
                None => Outcome::Fail("303 without a session cookie".into()),
            }
        }
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            by_status(status, &body)
        }
        Err(e) => match e.downcast_ref::<reqwest::Error>() {
            Some(e) => transport(e),
            None => Outcome::Unknown(format!("{e:#}")),
        },
    };
    let made = matches!(outcome, Outcome::Ok(_));
    h.complete(p, outcome);
    made
}
