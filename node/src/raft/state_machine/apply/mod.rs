//! Applies one command: one `match` over every operation, each arm handing
//! the command to the aggregate whose records it changes. The match has no
//! catch-all arm, so a new operation does not compile until it is routed.
//!
//! Apply is deterministic: it reads no clock and no network (times come from
//! the command), and a refusal is a result, the same on every node.
//!
//! The aggregates depend on one another in one direction only: sessions on
//! users, tokens and throttle; sites on trust; trust, tickets, devices,
//! purge and sessions on tokens; tokens on users. A user change that ends
//! sessions is the one cascade against that direction: the dispatch hands
//! `sessions::end_user_sessions` to the users aggregate.

mod devices;
mod keys;
mod outbox;
mod peers;
mod purge;
mod sessions;
mod sites;
mod throttle;
mod tickets;
mod tokens;
mod trust;
mod users;

use baa_proto::command::{CommandResult, Op};
use baa_proto::sso::{IdTokenAlg, SiteOptions};

use super::staged::Staged;
use crate::raft::StorageError;

pub use devices::MAX_DEVICE_GRANTS;
/// How long a spent ticket id outlives its ticket (for tests).
#[cfg(test)]
pub(crate) const SPENT_GRACE_FOR_TESTS: u64 = tickets::SPENT_GRACE_MS;
/// How long a sealed-access login's spent marker outlives its ticket (for tests).
#[cfg(test)]
pub(crate) const ONCE_SPENT_GRACE_FOR_TESTS: u64 = tickets::ONCE_SPENT_GRACE_MS;

/// Applies `op` at time `now`. `Err` is a storage failure; a refusal of the
/// command itself is an `Ok(Err(ApplyError))`, identical on every node.
/// `request_id` reaches the operations that answer their own retries
/// ([`Op::answers_its_own_retries`]).
pub(super) fn apply_op(
    st: &mut Staged<'_>,
    now: u64,
    op: &Op,
    request_id: Option<&str>,
) -> Result<CommandResult, StorageError> {
    match op {
        Op::CreateUser(new) => users::create(st, now, new),
        Op::UpdateUser { username, patch } => {
            users::update(st, now, username, patch, sessions::end_user_sessions)
        }
        Op::SetUserDisabled { username, disabled } => {
            users::set_disabled(st, now, username, *disabled, sessions::end_user_sessions)
        }
        Op::PurgeRequestResults { before_ms } => purge::request_results(st, *before_ms),
        Op::CreateSession {
            session,
            account,
            source,
        } => sessions::create(st, now, session, account, source),
        Op::ReplaceSession {
            session,
            account,
            source,
            previous,
        } => sessions::replace(st, now, session, account, source, previous),
        Op::TouchSession { key } => sessions::touch(st, now, key),
        Op::RevokeSession { key } => sessions::revoke(st, now, key),
        Op::AddSite(site) => {
            sites::register(st, now, site, SiteOptions::default(), IdTokenAlg::Rs256)
        }
        Op::RemoveSite { client_id } => sites::remove(st, client_id),
        Op::SetTrust(trust) => trust::set(st, now, trust),
        Op::RevokeTrust { user_id, client_id } => trust::revoke(st, *user_id, client_id),
        Op::IssueTicket(ticket) => tickets::issue(st, now, ticket),
        Op::RedeemTicket {
            hash,
            client_id,
            redirect_uri,
            verifier_challenge,
            token,
            refresh,
        } => tickets::redeem(
            st,
            now,
            hash,
            client_id,
            redirect_uri,
            verifier_challenge.as_deref(),
            token,
            refresh.as_deref(),
        ),
        Op::Refresh {
            hash,
            client_id,
            token,
            refresh,
        } => tokens::refresh(st, now, hash, client_id, token, refresh),
        Op::StartDevice(grant) => devices::start(st, now, grant),
        Op::DecideDevice {
            user_code,
            session_key,
            approve,
        } => devices::decide(st, now, user_code, session_key, *approve),
        Op::PollDevice {
            device_hash,
            client_id,
            token,
            refresh,
        } => devices::poll(st, now, device_hash, client_id, token, refresh.as_deref()),
        Op::RevokeToken { hash } => tokens::revoke(st, now, hash),
        Op::RecordSignInFailure {
            account,
            source,
            rule,
        } => throttle::record_failure(st, now, account, source, rule),
        Op::AddSigningKey {
            key,
            publish_old_for_ms,
        } => keys::add(st, now, key.as_ref(), *publish_old_for_ms),
        Op::AddFederationKey {
            key,
            publish_old_for_ms,
        } => keys::add(st, now, key.as_ref(), *publish_old_for_ms),
        Op::AddPeerAgency(peer) => peers::add(st, now, peer),
        Op::RemovePeerAgency { issuer } => peers::remove(st, issuer),
        Op::FederatedSignIn(f) => peers::sign_in(st, now, f),
        Op::CompleteDeliveries { ids } => outbox::complete(st, ids),
        Op::RepinPeer { issuer, pin } => peers::repin(st, issuer, pin),
        Op::AddTicketKey {
            key,
            keep_old_for_ms,
        } => keys::add(st, now, key.as_ref(), *keep_old_for_ms),
        Op::RedeemSealedTicket {
            ticket,
            client_id,
            redirect_uri,
            verifier_challenge,
            token,
            refresh,
        } => tickets::redeem_sealed(
            st,
            now,
            ticket,
            &tickets::Presented::new(client_id, redirect_uri, verifier_challenge),
            tokens::Access::Stored(token),
            refresh.as_deref(),
        ),
        Op::RedeemForSealedAccess {
            ticket,
            client_id,
            redirect_uri,
            verifier_challenge,
            access_ttl_ms,
            refresh,
        } => tickets::redeem_sealed(
            st,
            now,
            ticket,
            &tickets::Presented::new(client_id, redirect_uri, verifier_challenge),
            tokens::Access::Sealed {
                ttl_ms: *access_ttl_ms,
            },
            refresh.as_deref(),
        ),
        Op::RedeemSealedOnce {
            ticket,
            client_id,
            redirect_uri,
            verifier_challenge,
            access_ttl_ms,
            refresh,
        } => tickets::redeem_once(
            st,
            now,
            ticket,
            &tickets::Presented::new(client_id, redirect_uri, verifier_challenge),
            *access_ttl_ms,
            refresh.as_deref(),
            request_id,
        ),
        Op::RevokeSealedAccess { id, expires_ms } => {
            tokens::revoke_sealed(st, now, id, *expires_ms)
        }
        Op::AddWrappedTicketKey {
            key,
            keep_old_for_ms,
        } => keys::add(st, now, key.as_ref(), *keep_old_for_ms),
        Op::AddWrappedFederationKey {
            key,
            publish_old_for_ms,
        } => keys::add(st, now, key.as_ref(), *publish_old_for_ms),
        Op::SetWrappedPairwiseSalt { salt } => keys::set_wrapped_pairwise_salt(st, salt),
        Op::RewrapSecrets { secrets } => keys::rewrap(st, secrets),
        Op::PurgeExpired => purge::expired(st, now),
        Op::RevokeUserSessions { username } => sessions::revoke_all_of(st, now, username),
        Op::SetPairwiseSalt { salt } => keys::set_pairwise_salt(st, salt),
        Op::RegisterSite { site, options } => {
            sites::register(st, now, site, *options, IdTokenAlg::Rs256)
        }
        Op::RegisterSiteWithAlg {
            site,
            options,
            id_token_alg,
        } => sites::register(st, now, site, *options, *id_token_alg),
        Op::RecordFailedSignIn {
            account,
            source,
            policy,
        } => throttle::record_failed_sign_in(st, now, account, source, policy),
        Op::Sweep {
            request_cutoff_ms,
            auto_request_cutoff_ms,
            budget,
        } => purge::sweep(
            st,
            now,
            *request_cutoff_ms,
            *auto_request_cutoff_ms,
            *budget,
        ),
    }
}
