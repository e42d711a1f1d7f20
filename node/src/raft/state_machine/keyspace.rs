//! Every key of the state machine's tree, in one table: what each prefix
//! holds and the type its values are encoded as. Keys are a one- or
//! two-byte family prefix followed by the record's own key; the families are
//! disjoint, so a scan of one prefix never sees another family's records.
//! The builders of composite keys follow the table, and the keys of the root
//! tree, which names the tree holding the state, close it.

use baa_proto::codec;
use baa_proto::model::User;
use baa_proto::sso::{
    AccessToken, DeviceGrant, Failures, LoginTicket, PairwiseSalt, RefreshToken, SecretHash,
    Session, SigningKey, Site, SiteOptions, Trust,
};

use baa_proto::command::CommandResult;
use serde::{Deserialize, Serialize};

use crate::raft::{LogId, StoredMembership};

/// A remembered result of a command that carried a request id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RequestRecord {
    /// When the command was applied (its proposer's time).
    pub(super) time_ms: u64,
    /// What it produced, returned again to a retry.
    pub(super) result: CommandResult,
}

/// The log id of the last applied entry: `Option<LogId>`.
pub(super) const KEY_APPLIED: &[u8] = b"m/applied";
/// The last applied membership: `StoredMembership`.
pub(super) const KEY_MEMBERSHIP: &[u8] = b"m/membership";
/// The id the next created user gets: `u64`.
pub(super) const KEY_NEXT_USER_ID: &[u8] = b"m/next_user_id";
/// The key id of the current signing key: `String`.
pub(super) const KEY_CURRENT_KID: &[u8] = b"m/current_kid";
/// Where the next sweep starts: a key (`Vec<u8>`; empty: the beginning).
pub(super) const KEY_SWEEP_CURSOR: &[u8] = b"m/sweep_cursor";
/// How many device grants are stored: `u64` (their cap is kept in apply).
pub(super) const KEY_DEVICE_GRANTS: &[u8] = b"m/device_grants";
/// The salt of pairwise subject identifiers in the clear, as releases
/// before keys were wrapped stored it: `PairwiseSalt`.
pub(super) const KEY_PAIRWISE_SALT: &[u8] = b"m/pairwise_salt";
/// The salt of pairwise subject identifiers, wrapped (`Vec<u8>`, an envelope).
pub(super) const KEY_WRAPPED_PAIRWISE_SALT: &[u8] = b"m/wrapped_pairwise_salt";
/// Key id (`String`) of the current federation key.
pub(super) const KEY_CURRENT_FEDERATION_KID: &[u8] = b"m/current_federation_kid";
/// The id of the next outbox item: `u64`.
pub(super) const KEY_NEXT_OUTBOX_ID: &[u8] = b"m/next_outbox_id";
/// The kid of the current ticket key: `String`.
pub(super) const KEY_CURRENT_TICKET_KID: &[u8] = b"m/current_ticket_kid";
/// username → `User`.
pub(super) const PREFIX_USER: &[u8] = b"u/";
/// user id (big-endian) → username (`String`), to find a session's user.
pub(super) const PREFIX_USER_BY_ID: &[u8] = b"U/";
/// request id → `RequestRecord`, the first result of a command that carried it.
pub(super) const PREFIX_REQUEST: &[u8] = b"r/";
/// session key (hash of the cookie secret) → `Session`.
pub(super) const PREFIX_SESSION: &[u8] = b"s/";
/// Index: session's public handle (`sid`) → session key (`SecretHash`).
pub(super) const PREFIX_SESSION_BY_SID: &[u8] = b"I/";
/// Index: user id (big-endian) ++ session key → `()`: a user's sessions.
pub(super) const PREFIX_USER_SESSIONS: &[u8] = b"V/";
/// client id → `Site`.
pub(super) const PREFIX_SITE: &[u8] = b"c/";
/// client id → `SiteOptions` (absent: the defaults).
pub(super) const PREFIX_SITE_OPTIONS: &[u8] = b"O/";
/// client id → `IdTokenAlg` (absent: RS256).
pub(super) const PREFIX_SITE_ALG: &[u8] = b"A/";
/// revoked id (a sealed access token's, a ticket's whose tokens go with
/// it, or a refresh family's) → when the record may go (`u64`).
pub(super) const PREFIX_REVOKED_ACCESS: &[u8] = b"Y/";
/// user id (big-endian) ++ client id → `Trust`.
pub(super) const PREFIX_TRUST: &[u8] = b"t/";
/// ticket hash → `LoginTicket`.
pub(super) const PREFIX_TICKET: &[u8] = b"k/";
/// access-token hash → `AccessToken`.
pub(super) const PREFIX_TOKEN: &[u8] = b"x/";
/// Index: session key ++ token hash → `()`: the access and refresh tokens of a session.
pub(super) const PREFIX_SESSION_TOKENS: &[u8] = b"X/";
/// key id → `SigningKey` (its private key wrapped, or in the clear as
/// releases before keys were wrapped stored it).
pub(super) const PREFIX_KEY: &[u8] = b"K/";
/// throttle subject → `Failures`.
pub(super) const PREFIX_FAILURES: &[u8] = b"f/";
/// refresh-token hash → `RefreshToken`.
pub(super) const PREFIX_REFRESH: &[u8] = b"R/";
/// Index: family ++ refresh-token hash → `()`.
pub(super) const PREFIX_FAMILY: &[u8] = b"Q/";
/// device-code hash → `DeviceGrant`.
pub(super) const PREFIX_DEVICE: &[u8] = b"D/";
/// Index: normalised user code → device-code hash (`SecretHash`).
pub(super) const PREFIX_USER_CODE: &[u8] = b"d/";
/// key id → `FederationKey`, in the clear: as releases before keys were
/// wrapped stored them (rewrapping moves them to [`PREFIX_WRAPPED_FEDERATION_KEY`]).
pub(super) const PREFIX_FEDERATION_KEY: &[u8] = b"F/";
/// key id → `WrappedFederationKey`.
pub(super) const PREFIX_WRAPPED_FEDERATION_KEY: &[u8] = b"J/";
/// issuer URL → `PeerAgency`.
pub(super) const PREFIX_PEER_AGENCY: &[u8] = b"P/";
/// Ticket keys in the clear: kid → `TicketKey`, as releases before keys
/// were wrapped stored them (rewrapping moves them to [`PREFIX_WRAPPED_TICKET_KEY`]).
pub(super) const PREFIX_TICKET_KEY: &[u8] = b"T/";
/// Ticket keys: kid → `WrappedTicketKey`.
pub(super) const PREFIX_WRAPPED_TICKET_KEY: &[u8] = b"W/";
/// Spent sealed tickets: ticket id → `SpentTicket`.
pub(super) const PREFIX_SPENT: &[u8] = b"S/";
/// Spent sealed tickets of [`baa_proto::command::Op::RedeemSealedOnce`]:
/// when the marker may go (`u64`, big-endian) ++ ticket id → `SpentOnce`.
/// The time leads so that markers are written and removed in time order.
pub(super) const PREFIX_SPENT_ONCE: &[u8] = b"E/";
/// Back-channel logouts to deliver: id (`u64`, big-endian) → `OutboxItem`.
pub(super) const PREFIX_OUTBOX: &[u8] = b"B/";
/// A peer's subject linked to a local account: issuer, 0, sub → user id (`u64`).
pub(super) const PREFIX_SUBJECT_LINK: &[u8] = b"L/";
/// The peer session a local session was derived from: session key → `PeerSessionLink`.
pub(super) const PREFIX_SESSION_PEER: &[u8] = b"G/";
/// Local sessions derived from a peer session: issuer, 0, peer sid, 0, session key → `()`.
pub(super) const PREFIX_PEER_SESSIONS: &[u8] = b"H/";

/// `prefix` ++ `rest`: the key of a record whose own key is `rest`.
pub(super) fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    [prefix, rest].concat()
}

/// The key of the user named `username`.
pub(super) fn user_key(username: &str) -> Vec<u8> {
    key(PREFIX_USER, username.as_bytes())
}

/// The key of the username of user `id`.
pub(super) fn user_by_id_key(id: u64) -> Vec<u8> {
    key(PREFIX_USER_BY_ID, &id.to_be_bytes())
}

/// The key of the remembered result of request `id`.
pub(super) fn request_key(id: &str) -> Vec<u8> {
    key(PREFIX_REQUEST, id.as_bytes())
}

/// The key of the spent marker of ticket `id`, kept until `keep_until_ms`.
pub(super) fn spent_once_key(keep_until_ms: u64, id: &[u8; 16]) -> Vec<u8> {
    [PREFIX_SPENT_ONCE, &keep_until_ms.to_be_bytes(), id].concat()
}

/// When the spent marker under `k` (a key of [`PREFIX_SPENT_ONCE`]) may go.
pub(super) fn spent_once_until(k: &[u8]) -> Option<u64> {
    let t = k.get(PREFIX_SPENT_ONCE.len()..PREFIX_SPENT_ONCE.len() + 8)?;
    Some(u64::from_be_bytes(t.try_into().ok()?))
}

/// The prefix of every session index entry of user `user_id`.
pub(super) fn user_sessions_prefix(user_id: u64) -> Vec<u8> {
    key(PREFIX_USER_SESSIONS, &user_id.to_be_bytes())
}

/// The index entry of session `session` of user `user_id`.
pub(super) fn user_session_key(user_id: u64, session: &SecretHash) -> Vec<u8> {
    [PREFIX_USER_SESSIONS, &user_id.to_be_bytes(), session].concat()
}

/// The prefix of every trust of user `user_id`.
pub(super) fn user_trusts_prefix(user_id: u64) -> Vec<u8> {
    key(PREFIX_TRUST, &user_id.to_be_bytes())
}

/// The key of user `user_id`'s trust in site `client_id`.
pub(super) fn trust_key(user_id: u64, client_id: &str) -> Vec<u8> {
    [PREFIX_TRUST, &user_id.to_be_bytes(), client_id.as_bytes()].concat()
}

/// The index entry of token `hash` (access or refresh) of session `session`.
pub(super) fn session_token_key(session: &[u8], hash: &[u8]) -> Vec<u8> {
    [PREFIX_SESSION_TOKENS, session, hash].concat()
}

/// The index entry of refresh token `hash` in its family `family`.
pub(super) fn family_key(family: &[u8], hash: &[u8]) -> Vec<u8> {
    [PREFIX_FAMILY, family, hash].concat()
}

/// The key of the link of subject `sub` of peer `peer`.
pub(super) fn subject_link_key(peer: &str, sub: &str) -> Vec<u8> {
    [PREFIX_SUBJECT_LINK, peer.as_bytes(), &[0], sub.as_bytes()].concat()
}

/// The prefix of the local sessions derived from session `peer_sid` of `peer`.
pub(super) fn peer_sessions_prefix(peer: &str, peer_sid: &str) -> Vec<u8> {
    [
        PREFIX_PEER_SESSIONS,
        peer.as_bytes(),
        &[0],
        peer_sid.as_bytes(),
        &[0],
    ]
    .concat()
}

/// Decodes `value` as the type its key's family holds and returns the
/// family's name: a check that every record on disk reads back.
pub(super) fn decode(key: &[u8], value: &[u8]) -> Result<&'static str, String> {
    fn as_<T: serde::de::DeserializeOwned>(
        name: &'static str,
        value: &[u8],
    ) -> Result<&'static str, String> {
        codec::decode_record::<T>(value)
            .map(|_| name)
            .map_err(|e| format!("{name}: {e}"))
    }
    match key {
        KEY_APPLIED => as_::<Option<LogId>>("applied", value),
        KEY_MEMBERSHIP => as_::<StoredMembership>("membership", value),
        KEY_NEXT_USER_ID => as_::<u64>("next_user_id", value),
        KEY_CURRENT_KID => as_::<String>("current_kid", value),
        KEY_PAIRWISE_SALT => as_::<PairwiseSalt>("pairwise_salt", value),
        KEY_WRAPPED_PAIRWISE_SALT => as_::<Vec<u8>>("wrapped_pairwise_salt", value),
        KEY_SWEEP_CURSOR => as_::<Vec<u8>>("sweep_cursor", value),
        KEY_DEVICE_GRANTS => as_::<u64>("device_grants", value),
        KEY_CURRENT_FEDERATION_KID => as_::<String>("current_federation_kid", value),
        KEY_NEXT_OUTBOX_ID => as_::<u64>("next_outbox_id", value),
        KEY_CURRENT_TICKET_KID => as_::<String>("current_ticket_kid", value),
        k if k.starts_with(PREFIX_USER) => as_::<User>("user", value),
        k if k.starts_with(PREFIX_USER_BY_ID) => as_::<String>("user_by_id", value),
        k if k.starts_with(PREFIX_REQUEST) => as_::<RequestRecord>("request", value),
        k if k.starts_with(PREFIX_SESSION) => as_::<Session>("session", value),
        k if k.starts_with(PREFIX_SESSION_BY_SID) => as_::<SecretHash>("session_by_sid", value),
        k if k.starts_with(PREFIX_USER_SESSIONS) => as_::<()>("user_sessions", value),
        k if k.starts_with(PREFIX_SITE) => as_::<Site>("site", value),
        k if k.starts_with(PREFIX_SITE_OPTIONS) => as_::<SiteOptions>("site_options", value),
        k if k.starts_with(PREFIX_REVOKED_ACCESS) => as_::<u64>("revoked_access", value),
        k if k.starts_with(PREFIX_SITE_ALG) => {
            as_::<baa_proto::sso::IdTokenAlg>("site_id_token_alg", value)
        }
        k if k.starts_with(PREFIX_TRUST) => as_::<Trust>("trust", value),
        k if k.starts_with(PREFIX_TICKET) => as_::<LoginTicket>("ticket", value),
        k if k.starts_with(PREFIX_TOKEN) => as_::<AccessToken>("access_token", value),
        k if k.starts_with(PREFIX_SESSION_TOKENS) => as_::<()>("session_tokens", value),
        k if k.starts_with(PREFIX_KEY) => as_::<SigningKey>("signing_key", value),
        k if k.starts_with(PREFIX_FAILURES) => as_::<Failures>("failures", value),
        k if k.starts_with(PREFIX_REFRESH) => as_::<RefreshToken>("refresh_token", value),
        k if k.starts_with(PREFIX_FAMILY) => as_::<()>("family", value),
        k if k.starts_with(PREFIX_DEVICE) => as_::<DeviceGrant>("device", value),
        k if k.starts_with(PREFIX_USER_CODE) => as_::<SecretHash>("user_code", value),
        k if k.starts_with(PREFIX_FEDERATION_KEY) => {
            as_::<baa_proto::federation::FederationKey>("federation_key", value)
        }
        k if k.starts_with(PREFIX_PEER_AGENCY) => {
            as_::<baa_proto::federation::PeerAgency>("peer_agency", value)
        }
        k if k.starts_with(PREFIX_TICKET_KEY) => {
            as_::<baa_proto::sso::TicketKey>("ticket_key", value)
        }
        k if k.starts_with(PREFIX_WRAPPED_TICKET_KEY) => {
            as_::<baa_proto::sso::WrappedTicketKey>("wrapped_ticket_key", value)
        }
        k if k.starts_with(PREFIX_WRAPPED_FEDERATION_KEY) => {
            as_::<baa_proto::federation::WrappedFederationKey>("wrapped_federation_key", value)
        }
        k if k.starts_with(PREFIX_SPENT) => {
            as_::<baa_proto::sso::SpentTicket>("spent_ticket", value)
        }
        k if k.starts_with(PREFIX_SPENT_ONCE) => {
            as_::<baa_proto::sso::SpentOnce>("spent_once", value)
        }
        k if k.starts_with(PREFIX_OUTBOX) => as_::<baa_proto::sso::OutboxItem>("outbox", value),
        k if k.starts_with(PREFIX_SUBJECT_LINK) => as_::<u64>("subject_link", value),
        k if k.starts_with(PREFIX_SESSION_PEER) => {
            as_::<baa_proto::federation::PeerSessionLink>("session_peer", value)
        }
        k if k.starts_with(PREFIX_PEER_SESSIONS) => as_::<()>("peer_sessions", value),
        k => Err(format!("no family for key {}", String::from_utf8_lossy(k))),
    }
}

// The root tree (`sm_root`) names the tree holding the state, so that a
// snapshot install switches to a fresh tree with one write.

/// In the root tree: the name of the active tree (raw bytes, `sm.N`).
pub(super) const ROOT_ACTIVE: &[u8] = b"active";
/// In the root tree: the number of the last tree made for an install: `u64`.
pub(super) const ROOT_SEQ: &[u8] = b"seq";
/// In the root tree: the log id of the last snapshot installed
/// (`Option<LogId>`), written with the switch to its tree. A snapshot on
/// disk behind it at open was lost to a crash (see `cover_applied_state`).
pub(super) const ROOT_INSTALLED: &[u8] = b"installed";
