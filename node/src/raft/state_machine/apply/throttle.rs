//! Sign-in throttling: failures counted per account, source and pair, the
//! locks they set, and their forgiveness by a right password.

use baa_proto::command::{ApplyError, CommandResult, Outcome};
use baa_proto::sso::{Failures, SecretHash, ThrottlePolicy, ThrottleRule, ThrottleSubject};
use baa_proto::ErrorCode;

use super::super::keyspace::{key, PREFIX_FAILURES};
use super::super::staged::Staged;
use crate::raft::StorageError;

/// Refuses a sign-in of `account` from `source` while the pair, the account
/// or the source is locked. Checked at apply, so a lock recorded a moment
/// ago on another node holds even if this node had not applied it when it
/// checked the password.
pub(super) fn check_sign_in(
    st: &Staged<'_>,
    now: u64,
    account: &SecretHash,
    source: &str,
) -> Result<Result<(), ApplyError>, StorageError> {
    for subject in ThrottleSubject::of_sign_in(account, source) {
        if let Some(f) = st.get::<Failures>(&key(PREFIX_FAILURES, &subject.key()))? {
            if f.locked_at(now) {
                return Ok(Err(ApplyError::new(
                    ErrorCode::TooManyAttempts,
                    format!(
                        "locked for {} s more",
                        f.locked_until_ms.saturating_sub(now).div_ceil(1000)
                    ),
                )));
            }
        }
    }
    Ok(Ok(()))
}

/// A right password forgives the account's failures, from here and all
/// over: those of the pair and of the account, not of the source.
pub(super) fn forgive_sign_in(st: &mut Staged<'_>, account: &SecretHash, source: &str) {
    let [pair, account, _source] = ThrottleSubject::of_sign_in(account, source);
    st.remove(&key(PREFIX_FAILURES, &pair.key()));
    st.remove(&key(PREFIX_FAILURES, &account.key()));
}

/// Counts one failed sign-in against the account and the source under
/// `rule` (the counting of earlier releases, without the pair).
pub(super) fn record_failure(
    st: &mut Staged<'_>,
    now: u64,
    account: &SecretHash,
    source: &str,
    rule: &ThrottleRule,
) -> Result<CommandResult, StorageError> {
    let subjects = [
        (
            ThrottleSubject::Account(*account),
            rule.max_account_failures,
        ),
        (
            ThrottleSubject::Source(source.to_string()),
            rule.max_source_failures,
        ),
    ];
    for (subject, max) in subjects {
        let k = key(PREFIX_FAILURES, &subject.key());
        let f = st.get::<Failures>(&k)?.unwrap_or_default();
        st.put(&k, &f.record(now, rule, max.max(1)))?;
    }
    Ok(Ok(Outcome::Done))
}

/// Counts one failed sign-in against the pair, the account and the source
/// under `p`: progressive locks for the pair, plain ones for the others.
pub(super) fn record_failed_sign_in(
    st: &mut Staged<'_>,
    now: u64,
    account: &SecretHash,
    source: &str,
    p: &ThrottlePolicy,
) -> Result<CommandResult, StorageError> {
    let rule = ThrottleRule {
        window_ms: p.window_ms,
        max_account_failures: p.max_account_failures,
        max_source_failures: p.max_source_failures,
        lockout_ms: p.lockout_ms,
    };
    for subject in ThrottleSubject::of_sign_in(account, source) {
        let k = key(PREFIX_FAILURES, &subject.key());
        let f = st.get::<Failures>(&k)?.unwrap_or_default();
        let f = match subject {
            ThrottleSubject::Pair(..) => f.record_progressive(now, p),
            ThrottleSubject::Account(_) => f.record(now, &rule, p.max_account_failures.max(1)),
            ThrottleSubject::Source(_) => f.record(now, &rule, p.max_source_failures.max(1)),
        };
        st.put(&k, &f)?;
    }
    Ok(Ok(Outcome::Done))
}
