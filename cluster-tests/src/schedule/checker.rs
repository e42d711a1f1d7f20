//! The checker: what a history must satisfy by itself, and what it implies
//! the healed cluster must show.
//!
//! From the history alone ([`history_violations`]):
//! - no ticket is redeemed twice (two `Ok` redemptions of one ticket);
//! - no refresh token is rotated twice (two `Ok` rotations of one token:
//!   two live heirs);
//! - an acknowledged refresh token is not refused while its session is
//!   alive and nothing in it was replayed or left unknown;
//! - a retried admin write (same request id) is not answered as a second
//!   effect (409);
//! - linearizable reads never go back in time: a read sees every write
//!   acknowledged before it was invoked, and a read invoked after another
//!   completed sees at least its revision.
//!
//! From the history, for the healed cluster ([`expectations`]): sessions
//! that must still be valid on every node, sessions that must be refused
//! on every node (signed out), refresh tokens that must still rotate and
//! ones that must not, tickets that must never redeem again, users that
//! must exist on every node or on none, and the counter's attributes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::history::{Action, Entities, Op, Outcome, Value};

/// One broken promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which rule.
    pub rule: &'static str,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

fn violation(rule: &'static str, detail: String) -> Violation {
    Violation { rule, detail }
}

fn describe(op: &Op) -> String {
    format!(
        "worker {} on node {} at {}-{} ms: {:?} -> {:?}",
        op.worker,
        op.node,
        op.invoked.as_millis(),
        op.completed.as_millis(),
        op.action,
        op.outcome
    )
}

/// Sessions whose refresh tokens may have been revoked by something other
/// than a sign-out: a ticket of theirs presented more than once (a replay
/// revokes what the first redemption granted), or a rotation whose outcome
/// is unknown (its retry is a reuse, which revokes the client's tokens in
/// the session), or a token presented twice.
fn tainted_sessions(ops: &[Op], e: &Entities) -> BTreeSet<usize> {
    let mut redeems: BTreeMap<usize, usize> = BTreeMap::new();
    let mut presented: BTreeMap<usize, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for op in ops {
        match &op.action {
            Action::Redeem { code } => *redeems.entry(*code).or_default() += 1,
            Action::Refresh { token } => {
                *presented.entry(*token).or_default() += 1;
                if op.unknown() {
                    if let Some(r) = e.refresh.get(*token) {
                        out.insert(r.session);
                    }
                }
            }
            _ => {}
        }
    }
    for (code, n) in redeems {
        if n > 1 {
            if let Some(c) = e.codes.get(code) {
                out.insert(c.session);
            }
        }
    }
    for (token, n) in presented {
        if n > 1 {
            if let Some(r) = e.refresh.get(token) {
                out.insert(r.session);
            }
        }
    }
    out
}

/// Sessions a sign-out was attempted on (whatever its outcome but a
/// definite refusal).
fn signed_out_maybe(ops: &[Op]) -> BTreeSet<usize> {
    ops.iter()
        .filter_map(|op| match op.action {
            Action::Logout { session } if !op.failed() => Some(session),
            _ => None,
        })
        .collect()
}

/// Violations visible in the history itself.
pub fn history_violations(ops: &[Op], e: &Entities) -> Vec<Violation> {
    let mut out = Vec::new();
    // One ticket, one redemption; one refresh token, one rotation.
    let mut redeemed: BTreeMap<usize, Vec<&Op>> = BTreeMap::new();
    let mut rotated: BTreeMap<usize, Vec<&Op>> = BTreeMap::new();
    for op in ops.iter().filter(|op| op.ok()) {
        match op.action {
            Action::Redeem { code } => redeemed.entry(code).or_default().push(op),
            Action::Refresh { token } => rotated.entry(token).or_default().push(op),
            _ => {}
        }
    }
    for (code, oks) in &redeemed {
        if oks.len() > 1 {
            let seen: Vec<String> = oks.iter().map(|op| describe(op)).collect();
            out.push(violation(
                "ticket redeemed twice",
                format!("ticket #{code}: {}", seen.join("; ")),
            ));
        }
    }
    for (token, oks) in &rotated {
        if oks.len() > 1 {
            let seen: Vec<String> = oks.iter().map(|op| describe(op)).collect();
            out.push(violation(
                "two live heirs",
                format!("refresh token #{token} rotated twice: {}", seen.join("; ")),
            ));
        }
    }
    // An acknowledged refresh token refused while nothing could have revoked it.
    let tainted = tainted_sessions(ops, e);
    let out_maybe = signed_out_maybe(ops);
    for op in ops {
        if let (Action::Refresh { token }, Outcome::Fail(why)) = (&op.action, &op.outcome) {
            // Refused by the agency, not a request that was never sent.
            if !why.starts_with("HTTP 4") {
                continue;
            }
            let Some(r) = e.refresh.get(*token) else {
                continue;
            };
            if !tainted.contains(&r.session) && !out_maybe.contains(&r.session) {
                out.push(violation(
                    "acknowledged refresh token refused",
                    format!(
                        "refresh token #{token} of session #{}: {why}; {}",
                        r.session,
                        describe(op)
                    ),
                ));
            }
        }
    }
    // A retry with the same request id gets the first answer.
    for op in ops {
        if let (Action::CreateUser { .. } | Action::Write { .. }, Outcome::Fail(why)) =
            (&op.action, &op.outcome)
        {
            if why.starts_with("HTTP 409") {
                out.push(violation("retry applied twice", describe(op)));
            }
        }
    }
    out.extend(read_violations(ops));
    out
}

/// Linearizable reads of the counter against its acknowledged writes.
fn read_violations(ops: &[Op]) -> Vec<Violation> {
    let mut out = Vec::new();
    let writes: Vec<(&str, &Op)> = ops
        .iter()
        .filter(|op| op.ok())
        .filter_map(|op| match &op.action {
            Action::Write { key } => Some((key.as_str(), op)),
            _ => None,
        })
        .collect();
    let reads: Vec<(u64, &BTreeSet<String>, &Op)> = ops
        .iter()
        .filter_map(|op| match (&op.action, &op.outcome) {
            (Action::Read, Outcome::Ok(Value::Read { revision, keys })) => {
                Some((*revision, keys, op))
            }
            _ => None,
        })
        .collect();
    for (_, keys, r) in &reads {
        let missed: Vec<&str> = writes
            .iter()
            .filter(|(k, w)| w.completed < r.invoked && !keys.contains(*k))
            .map(|(k, _)| *k)
            .collect();
        if !missed.is_empty() {
            out.push(violation(
                "stale linearizable read",
                format!(
                    "{} misses writes acknowledged before it began: {missed:?}",
                    describe(r)
                ),
            ));
        }
    }
    for (rev_a, _, a) in &reads {
        for (rev_b, _, b) in &reads {
            if a.completed < b.invoked && rev_b < rev_a {
                out.push(violation(
                    "read went back in time",
                    format!(
                        "revision {rev_a} then {rev_b}: {}; then {}",
                        describe(a),
                        describe(b)
                    ),
                ));
            }
        }
    }
    out
}

/// What the healed cluster must show, given the history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectations {
    /// Sessions signed in (`Ok`) and never signed out: valid on every node.
    pub live_sessions: BTreeSet<usize>,
    /// Sessions signed out (`Ok`): refused on every node.
    pub ended_sessions: BTreeSet<usize>,
    /// Refresh tokens never presented, of live sessions with nothing
    /// replayed or unknown: they still rotate.
    pub live_heirs: BTreeSet<usize>,
    /// Refresh tokens never presented, of signed-out sessions: refused.
    pub dead_heirs: BTreeSet<usize>,
    /// Tickets redeemed (`Ok`): never redeemed again.
    pub spent_codes: BTreeSet<usize>,
    /// Users created (`Ok`): present on every node.
    pub present_users: BTreeSet<String>,
    /// Users whose every creation was refused: present on no node.
    pub absent_users: BTreeSet<String>,
    /// Counter attributes acknowledged: present on every node.
    pub acked_keys: BTreeSet<String>,
    /// Counter attributes ever sent: nothing else may be there.
    pub sent_keys: BTreeSet<String>,
    /// B's sessions signed in and never signed out: valid on every node of B.
    pub live_peer_sessions: BTreeSet<usize>,
    /// B's sessions signed out (`Ok`): refused on every node of B.
    pub ended_peer_sessions: BTreeSet<usize>,
    /// Sessions A derived from a B session never signed out: valid on
    /// every node of A.
    pub live_derived: BTreeSet<usize>,
    /// Sessions A derived from a B session before its sign-out (`Ok`) was
    /// asked for: refused on every node of A.
    pub ended_derived: BTreeSet<usize>,
}

/// The expectations of the federated part of a history: B's sessions, and
/// the sessions A derived from them (a B sign-out that may have happened
/// leaves its derived sessions either way).
fn peer_expectations(ops: &[Op], x: &mut Expectations) {
    let mut out_maybe = BTreeSet::new();
    let mut ended_at: BTreeMap<usize, std::time::Duration> = BTreeMap::new();
    for op in ops {
        if let Action::PeerLogout { peer_session } = op.action {
            if !op.failed() {
                out_maybe.insert(peer_session);
            }
            if op.ok() {
                let at = ended_at.entry(peer_session).or_insert(op.invoked);
                *at = (*at).min(op.invoked);
            }
        }
    }
    for op in ops {
        match (&op.action, &op.outcome) {
            (Action::PeerSignIn { .. }, Outcome::Ok(Value::PeerSession(s)))
                if !out_maybe.contains(s) =>
            {
                x.live_peer_sessions.insert(*s);
            }
            (Action::CrossSignIn { peer_session }, Outcome::Ok(Value::Derived(d))) => {
                match ended_at.get(peer_session) {
                    Some(at) if op.completed < *at => {
                        x.ended_derived.insert(*d);
                    }
                    Some(_) => {}
                    None if !out_maybe.contains(peer_session) => {
                        x.live_derived.insert(*d);
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }
    x.ended_peer_sessions = ended_at.into_keys().collect();
}

/// Derives the [`Expectations`] of a history.
pub fn expectations(ops: &[Op], e: &Entities) -> Expectations {
    let mut x = Expectations::default();
    let out_maybe = signed_out_maybe(ops);
    let tainted = tainted_sessions(ops, e);
    for op in ops {
        match (&op.action, &op.outcome) {
            (Action::SignIn { .. }, Outcome::Ok(Value::Session(s))) if !out_maybe.contains(s) => {
                x.live_sessions.insert(*s);
            }
            (Action::Logout { session }, Outcome::Ok(_)) => {
                x.ended_sessions.insert(*session);
            }
            (Action::Redeem { code }, Outcome::Ok(_)) => {
                x.spent_codes.insert(*code);
            }
            (Action::CreateUser { name }, Outcome::Ok(_)) => {
                x.present_users.insert(name.clone());
            }
            (Action::Write { key }, outcome) => {
                x.sent_keys.insert(key.clone());
                if matches!(outcome, Outcome::Ok(_)) {
                    x.acked_keys.insert(key.clone());
                }
            }
            _ => {}
        }
    }
    let mut creations: BTreeMap<&str, bool> = BTreeMap::new();
    for op in ops {
        if let Action::CreateUser { name } = &op.action {
            *creations.entry(name).or_insert(true) &= op.failed();
        }
    }
    x.absent_users = creations
        .into_iter()
        .filter(|(_, all_failed)| *all_failed)
        .map(|(n, _)| n.to_string())
        .collect();
    peer_expectations(ops, &mut x);
    let presented: BTreeSet<usize> = ops
        .iter()
        .filter_map(|op| match op.action {
            Action::Refresh { token } => Some(token),
            _ => None,
        })
        .collect();
    for (i, r) in e.refresh.iter().enumerate() {
        if presented.contains(&i) {
            continue;
        }
        if x.ended_sessions.contains(&r.session) {
            x.dead_heirs.insert(i);
        } else if x.live_sessions.contains(&r.session) && !tainted.contains(&r.session) {
            x.live_heirs.insert(i);
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::super::history::{CodeRec, RefreshRec, SessionRec};
    use super::*;
    use crate::sso::SsoCookies;
    use std::time::Duration;

    fn op(node: u64, at: (u64, u64), action: Action, outcome: Outcome) -> Op {
        Op {
            worker: 0,
            node,
            action,
            invoked: Duration::from_millis(at.0),
            completed: Duration::from_millis(at.1),
            outcome,
        }
    }

    fn entities() -> Entities {
        let cookies = SsoCookies {
            session: "s".into(),
            reference: "r".into(),
        };
        Entities {
            sessions: vec![
                SessionRec {
                    user: "u0".into(),
                    cookies: cookies.clone(),
                },
                SessionRec {
                    user: "u1".into(),
                    cookies,
                },
            ],
            codes: vec![
                CodeRec {
                    session: 0,
                    code: "c0".into(),
                    verifier: "v".into(),
                },
                CodeRec {
                    session: 1,
                    code: "c1".into(),
                    verifier: "v".into(),
                },
            ],
            refresh: vec![
                RefreshRec {
                    session: 0,
                    code: 0,
                    parent: None,
                    token: "r0".into(),
                },
                RefreshRec {
                    session: 0,
                    code: 0,
                    parent: Some(0),
                    token: "r1".into(),
                },
                RefreshRec {
                    session: 1,
                    code: 1,
                    parent: None,
                    token: "r2".into(),
                },
            ],
            ..Entities::default()
        }
    }

    fn ok(v: Value) -> Outcome {
        Outcome::Ok(v)
    }

    /// Session 0: signed in, ticket 0 redeemed, rotated once. Session 1:
    /// signed in, ticket 1 redeemed, signed out.
    fn clean() -> Vec<Op> {
        vec![
            op(
                1,
                (0, 10),
                Action::SignIn { user: "u0".into() },
                ok(Value::Session(0)),
            ),
            op(
                2,
                (10, 20),
                Action::Issue { session: 0 },
                ok(Value::Code(0)),
            ),
            op(
                3,
                (20, 30),
                Action::Redeem { code: 0 },
                ok(Value::Refresh(0)),
            ),
            op(
                1,
                (30, 40),
                Action::Refresh { token: 0 },
                ok(Value::Refresh(1)),
            ),
            op(
                1,
                (0, 10),
                Action::SignIn { user: "u1".into() },
                ok(Value::Session(1)),
            ),
            op(
                2,
                (10, 20),
                Action::Issue { session: 1 },
                ok(Value::Code(1)),
            ),
            op(
                3,
                (20, 30),
                Action::Redeem { code: 1 },
                ok(Value::Refresh(2)),
            ),
            op(2, (40, 50), Action::Logout { session: 1 }, ok(Value::None)),
        ]
    }

    #[test]
    fn a_clean_history_passes_and_implies_the_final_state() {
        let e = entities();
        let ops = clean();
        assert_eq!(history_violations(&ops, &e), vec![]);
        let x = expectations(&ops, &e);
        assert_eq!(x.live_sessions, [0].into());
        assert_eq!(x.ended_sessions, [1].into());
        assert_eq!(x.live_heirs, [1].into());
        assert_eq!(x.dead_heirs, [2].into());
        assert_eq!(x.spent_codes, [0, 1].into());
    }

    #[test]
    fn a_second_ok_redemption_is_a_violation() {
        let e = entities();
        let mut ops = clean();
        ops.push(op(
            2,
            (21, 31),
            Action::Redeem { code: 0 },
            ok(Value::Refresh(1)),
        ));
        let v = history_violations(&ops, &e);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].rule, "ticket redeemed twice");
        // A refused second attempt is fine, and taints the session.
        let mut ops = clean();
        ops.push(op(
            2,
            (21, 31),
            Action::Redeem { code: 0 },
            Outcome::Fail("invalid_grant".into()),
        ));
        assert_eq!(history_violations(&ops, &e), vec![]);
        assert!(expectations(&ops, &e).live_heirs.is_empty());
    }

    #[test]
    fn two_heirs_and_a_refused_heir_are_violations() {
        let e = entities();
        let mut ops = clean();
        ops.push(op(
            2,
            (31, 41),
            Action::Refresh { token: 0 },
            ok(Value::Refresh(1)),
        ));
        let rules: Vec<&str> = history_violations(&ops, &e)
            .iter()
            .map(|v| v.rule)
            .collect();
        assert_eq!(rules, ["two live heirs"]);
        let mut ops = clean();
        ops.push(op(
            2,
            (41, 51),
            Action::Refresh { token: 1 },
            Outcome::Fail("not sent: refused".into()),
        ));
        assert_eq!(history_violations(&ops, &e), vec![]);
        let mut ops = clean();
        ops.push(op(
            2,
            (41, 51),
            Action::Refresh { token: 1 },
            Outcome::Fail("HTTP 400 Bad Request: invalid_grant".into()),
        ));
        let rules: Vec<&str> = history_violations(&ops, &e)
            .iter()
            .map(|v| v.rule)
            .collect();
        assert_eq!(rules, ["acknowledged refresh token refused"]);
        // Unless a rotation in the session had an unknown outcome.
        ops.push(op(
            3,
            (41, 51),
            Action::Refresh { token: 1 },
            Outcome::Unknown("timeout".into()),
        ));
        assert_eq!(history_violations(&ops, &e), vec![]);
    }

    #[test]
    fn reads_must_not_go_back_in_time() {
        let e = entities();
        let read = |at, rev, keys: &[&str]| {
            op(
                1,
                at,
                Action::Read,
                ok(Value::Read {
                    revision: rev,
                    keys: keys.iter().map(|k| k.to_string()).collect(),
                }),
            )
        };
        let write = |at, k: &str, outcome| op(2, at, Action::Write { key: k.into() }, outcome);
        let fine = vec![
            write((0, 10), "a1", ok(Value::None)),
            read((5, 8), 1, &[]),
            read((11, 20), 2, &["a1"]),
            write((12, 30), "a2", Outcome::Unknown("timeout".into())),
            read((31, 40), 2, &["a1"]),
        ];
        assert_eq!(history_violations(&fine, &e), vec![]);
        let mut stale = fine.clone();
        stale.push(read((41, 50), 1, &[]));
        let rules: Vec<&str> = history_violations(&stale, &e)
            .iter()
            .map(|v| v.rule)
            .collect();
        assert!(rules.contains(&"stale linearizable read"), "{rules:?}");
        assert!(rules.contains(&"read went back in time"), "{rules:?}");
        let x = expectations(&fine, &e);
        assert_eq!(x.acked_keys, ["a1".to_string()].into());
        assert_eq!(x.sent_keys.len(), 2);
    }

    #[test]
    fn users_present_absent_or_either() {
        let e = entities();
        let create =
            |n: &str, outcome| op(1, (0, 1), Action::CreateUser { name: n.into() }, outcome);
        let ops = vec![
            create("a", Outcome::Unknown("timeout".into())),
            create("a", ok(Value::None)),
            create("b", Outcome::Fail("HTTP 400".into())),
            create("c", Outcome::Unknown("reset".into())),
            create("d", Outcome::Fail("HTTP 409 Conflict: exists".into())),
            // Not an answer of the agency, whatever the port.
            create(
                "e",
                Outcome::Fail("not sent: https://127.0.0.1:14409/admin/v1/users".into()),
            ),
        ];
        let x = expectations(&ops, &e);
        assert_eq!(x.present_users, ["a".to_string()].into());
        assert_eq!(
            x.absent_users,
            ["b".to_string(), "d".to_string(), "e".to_string()].into()
        );
        let rules: Vec<&str> = history_violations(&ops, &e)
            .iter()
            .map(|v| v.rule)
            .collect();
        assert_eq!(rules, ["retry applied twice"]);
    }

    /// B's session 0 signed out after session A derived 0 from it and
    /// before A derived 1; B's session 1 never signed out (derived 2 live);
    /// B's session 2's sign-out unknown (derived 3 either way).
    #[test]
    fn derived_sessions_follow_their_home_session() {
        let e = entities();
        let cross = |p, at, d| {
            op(
                1,
                at,
                Action::CrossSignIn { peer_session: p },
                ok(Value::Derived(d)),
            )
        };
        let out = |p, at, outcome| op(2, at, Action::PeerLogout { peer_session: p }, outcome);
        let peer = |at, s| {
            op(
                3,
                at,
                Action::PeerSignIn { user: "b".into() },
                ok(Value::PeerSession(s)),
            )
        };
        let ops = vec![
            peer((0, 5), 0),
            peer((0, 5), 1),
            peer((0, 5), 2),
            cross(0, (10, 20), 0),
            out(0, (30, 40), ok(Value::None)),
            cross(0, (35, 50), 1),
            cross(1, (10, 20), 2),
            cross(2, (10, 20), 3),
            out(2, (30, 40), Outcome::Unknown("timeout".into())),
            op(
                1,
                (60, 70),
                Action::CrossSignIn { peer_session: 1 },
                Outcome::Fail("HTTP 401".into()),
            ),
        ];
        let x = expectations(&ops, &e);
        assert_eq!(x.live_peer_sessions, [1].into());
        assert_eq!(x.ended_peer_sessions, [0].into());
        assert_eq!(x.live_derived, [2].into());
        assert_eq!(x.ended_derived, [0].into());
    }
}
