//! Commands: the only way replicated state changes. Each command carries the time
//! chosen by the node that proposed it, so applying it never reads a clock and
//! every node reaches the same state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::User;
use crate::sso::{
    AccessToken, DeviceGrant, DevicePoll, Grant, LoginTicket, RefreshToken, RevokedSession,
    SecretHash, Session, SigningKey, Site, ThrottleRule, Trust,
};
use crate::ErrorCode;

/// A client-chosen id that makes a write idempotent: the state machine keeps the
/// result of recent request ids and answers a retry with the first result.
pub type RequestId = String;

/// Longest accepted request id.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Checks a request id: 8–64 characters of `A-Z a-z 0-9 - _ .`.
pub fn valid_request_id(id: &str) -> bool {
    (8..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// One replicated state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Idempotency key; a second command with the same id is not applied again.
    pub request_id: Option<RequestId>,
    /// Proposer's wall-clock time, ms since the Unix epoch.
    pub time_ms: u64,
    /// What to change.
    pub op: Op,
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print field values: they may hold secrets (password hashes now, tokens later).
        write!(f, "{}", self.op.name())
    }
}

/// One Raft log entry: commands a node grouped into a single proposal. They
/// are applied in order; each gets its own result. Grouping concurrent writes
/// means one log append, one replication round and one fsync for all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The commands, applied in this order.
    pub commands: Vec<Command>,
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "proposal of {} command(s)", self.commands.len())
    }
}

/// The operations the state machine knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create a user; fails with `user_exists` if the name is taken.
    CreateUser(NewUser),
    /// Change some fields of a user.
    UpdateUser {
        /// The user to change.
        username: String,
        /// The fields to change.
        patch: UserPatch,
    },
    /// Disable or re-enable a user.
    SetUserDisabled {
        /// The user to change.
        username: String,
        /// The new state.
        disabled: bool,
    },
    /// Forget remembered request results older than `before_ms`.
    PurgeRequestResults {
        /// Cut-off time, ms since the Unix epoch.
        before_ms: u64,
    },
    /// Start a session after a successful sign-in; clears the account's
    /// failure count. Refused with `too_many_attempts` while the account or
    /// the source address is locked, so a lock recorded a moment ago on
    /// another node holds even if this node has not applied it yet. Times are
    /// set from the command's time.
    CreateSession {
        /// The new session (timestamps are overwritten at apply).
        session: Box<Session>,
        /// Throttle key of the account name, whose failures are forgiven.
        account: SecretHash,
        /// Source address of the sign-in.
        source: String,
    },
    /// Record use of a session (slides its idle expiry).
    TouchSession {
        /// Session key.
        key: SecretHash,
    },
    /// End a session and every access token bound to it.
    RevokeSession {
        /// Session key.
        key: SecretHash,
    },
    /// Register a partner site; fails with `site_exists` if the id is taken.
    AddSite(Box<Site>),
    /// Remove a partner site and every trust relationship with it.
    RemoveSite {
        /// `client_id`.
        client_id: String,
    },
    /// Record (or replace) a user's trust relationship with a site.
    SetTrust(Box<Trust>),
    /// Remove a trust relationship.
    RevokeTrust {
        /// The user.
        user_id: u64,
        /// The site.
        client_id: String,
    },
    /// Store a new login ticket; refused if the session is gone.
    IssueTicket(Box<LoginTicket>),
    /// Redeem a login ticket, exactly once: checks and marks it used, and
    /// stores the access token. A second redemption revokes that token.
    RedeemTicket {
        /// SHA-256 of the presented ticket.
        hash: SecretHash,
        /// The authenticated client presenting it.
        client_id: String,
        /// The redirect URI the client sends with it.
        redirect_uri: String,
        /// S256 of the presented PKCE verifier, if any.
        verifier_challenge: Option<String>,
        /// The access token to store if the redemption succeeds.
        token: Box<AccessToken>,
        /// A refresh token to store with it (the app asked for `offline_access`).
        refresh: Option<Box<RefreshToken>>,
    },
    /// Exchange a refresh token for a new access and refresh token, once:
    /// a used one revokes its whole family.
    Refresh {
        /// SHA-256 of the presented refresh token.
        hash: SecretHash,
        /// The authenticated client presenting it.
        client_id: String,
        /// The new access token.
        token: Box<AccessToken>,
        /// The new refresh token (same family).
        refresh: Box<RefreshToken>,
    },
    /// Store a new device authorization.
    StartDevice(Box<DeviceGrant>),
    /// The user approves or declines a device authorization by its user code.
    DecideDevice {
        /// Normalised user code.
        user_code: String,
        /// The deciding browser session.
        session_key: SecretHash,
        /// Approve (true) or decline.
        approve: bool,
    },
    /// The app polls a device authorization; on approval the tokens are stored.
    PollDevice {
        /// SHA-256 of the device code.
        device_hash: SecretHash,
        /// The polling client.
        client_id: String,
        /// The access token to store if approved.
        token: Box<AccessToken>,
        /// The refresh token to store if approved.
        refresh: Option<Box<RefreshToken>>,
    },
    /// Revoke one access token.
    RevokeToken {
        /// SHA-256 of the token.
        hash: SecretHash,
    },
    /// Count one failed sign-in against an account name and a source address.
    RecordSignInFailure {
        /// Throttle key of the account name as typed.
        account: SecretHash,
        /// Source IP address.
        source: String,
        /// The rule to apply.
        rule: ThrottleRule,
    },
    /// Add a signing key and make it current; the previous current key stays
    /// published for `publish_old_for_ms`.
    AddSigningKey {
        /// The new key.
        key: Box<SigningKey>,
        /// How long the replaced key keeps verifying.
        publish_old_for_ms: u64,
    },
    /// Remove expired sessions, tickets, tokens, throttle records and keys.
    PurgeExpired,
    /// End every session of a user, and the tokens bound to them.
    RevokeUserSessions {
        /// The user.
        username: String,
    },
    /// Set the salt of pairwise identifiers, unless one is set (first wins).
    SetPairwiseSalt {
        /// 256 random bits.
        salt: crate::sso::PairwiseSalt,
    },
    /// Register a partner site with its options; fails with `site_exists`
    /// if the id is taken. (`AddSite` is the same with default options.)
    RegisterSite {
        /// The site.
        site: Box<Site>,
        /// Its options.
        options: crate::sso::SiteOptions,
    },
    /// Count one failed sign-in against the (account, source) pair, the
    /// account and the source, under `policy`.
    RecordFailedSignIn {
        /// Throttle key of the account name as typed.
        account: SecretHash,
        /// Source IP address (the client's, through trusted proxies).
        source: String,
        /// The policy to apply.
        policy: crate::sso::ThrottlePolicy,
    },
    /// Remove what has expired among the next `budget` keys of the state
    /// after the sweep's cursor (kept in the state), then move the cursor:
    /// bounded work per apply, the whole state over successive sweeps.
    /// Remembered request results go when older than their cutoff (`auto-`
    /// ids, made by nodes for their own retries, sooner).
    Sweep {
        /// Results of caller-supplied request ids older than this go.
        request_cutoff_ms: u64,
        /// Results of node-made (`auto-`) request ids older than this go.
        auto_request_cutoff_ms: u64,
        /// Keys to look at, at most.
        budget: u32,
    },
    /// Add a federation key and make it current; the key it replaces stays
    /// published for `publish_old_for_ms`, so peers that pinned it can move
    /// to the new one.
    AddFederationKey {
        /// The new key.
        key: Box<crate::federation::FederationKey>,
        /// How long the replaced key stays published.
        publish_old_for_ms: u64,
    },
    /// Add a peer agency (its configuration was checked against the pin
    /// before); fails with `peer_exists` if the issuer is a peer already.
    AddPeerAgency(Box<crate::federation::PeerAgency>),
    /// Remove a peer agency; fails with `peer_not_found` if it is none.
    RemovePeerAgency {
        /// The peer's issuer URL.
        issuer: String,
    },
    /// Sign in with a peer agency's word: link the peer's subject to a
    /// local account (made on first use if allowed) and start a session
    /// linked to the peer's session.
    FederatedSignIn(Box<crate::federation::FederatedSignIn>),
    /// Remove back-channel deliveries from the outbox: delivered, or given
    /// up on.
    CompleteDeliveries {
        /// The outbox ids.
        ids: Vec<u64>,
    },
    /// Pin a peer agency to another of its federation keys: the one it signs
    /// with after a rotation this agency followed (nothing if it is no peer).
    RepinPeer {
        /// The peer's issuer URL.
        issuer: String,
        /// The thumbprint of the key it signs with now.
        pin: String,
    },
    /// Add a ticket key and make it current; the one it replaces keeps
    /// opening tickets for `keep_old_for_ms`.
    AddTicketKey {
        /// The new key.
        key: Box<crate::sso::TicketKey>,
        /// How long the replaced key still opens tickets.
        keep_old_for_ms: u64,
    },
    /// Redeem a sealed ticket (opened by the proposing node), once: marks
    /// its id spent and grants the tokens, if the session is alive.
    RedeemSealedTicket {
        /// The ticket's contents.
        ticket: Box<crate::sso::SealedTicket>,
        /// The authenticated client presenting it.
        client_id: String,
        /// The `redirect_uri` of the token request.
        redirect_uri: String,
        /// S256 of the presented `code_verifier`.
        verifier_challenge: Option<String>,
        /// The access token to store.
        token: Box<AccessToken>,
        /// The refresh token to store (with `offline_access`).
        refresh: Option<Box<RefreshToken>>,
    },
    /// [`Op::RegisterSite`] with the algorithm of the site's ID tokens.
    RegisterSiteWithAlg {
        /// The site.
        site: Box<Site>,
        /// Its options.
        options: crate::sso::SiteOptions,
        /// `id_token_signed_response_alg`.
        id_token_alg: crate::sso::IdTokenAlg,
    },
    /// [`Op::RedeemSealedTicket`] granting a sealed access token: nothing
    /// is stored for it (the proposing node seals it with the command's
    /// time as its issue time); a second redemption revokes the client's
    /// tokens in the session, sealed ones included.
    RedeemForSealedAccess {
        /// The ticket's contents.
        ticket: Box<crate::sso::SealedTicket>,
        /// The authenticated client presenting it.
        client_id: String,
        /// The `redirect_uri` of the token request.
        redirect_uri: String,
        /// S256 of the presented `code_verifier`.
        verifier_challenge: Option<String>,
        /// Lifetime of the access token (cut to the session's).
        access_ttl_ms: u64,
        /// The refresh token to store (with `offline_access`).
        refresh: Option<Box<RefreshToken>>,
    },
    /// Revoke one sealed access token until it would have expired.
    RevokeSealedAccess {
        /// Its id.
        id: [u8; 16],
        /// Its expiry: the record goes then.
        expires_ms: u64,
    },
    /// [`Op::RedeemForSealedAccess`] whose spent marker is all a login
    /// leaves: keyed by the time it may go, it also holds a fingerprint of
    /// the command's request id, so a retry of the same request gets the
    /// grant again without a remembered result of its own.
    RedeemSealedOnce {
        /// The ticket's contents.
        ticket: Box<crate::sso::SealedTicket>,
        /// The authenticated client presenting it.
        client_id: String,
        /// The `redirect_uri` of the token request.
        redirect_uri: String,
        /// S256 of the presented `code_verifier`.
        verifier_challenge: Option<String>,
        /// Lifetime of the access token (cut to the session's).
        access_ttl_ms: u64,
        /// The refresh token to store (with `offline_access`).
        refresh: Option<Box<RefreshToken>>,
    },
    /// [`Op::AddTicketKey`] of a key wrapped under the cluster's
    /// key-encryption key.
    AddWrappedTicketKey {
        /// The new key.
        key: Box<crate::sso::WrappedTicketKey>,
        /// How long the replaced key still opens tickets.
        keep_old_for_ms: u64,
    },
    /// [`Op::AddFederationKey`] of a key wrapped under the cluster's
    /// key-encryption key.
    AddWrappedFederationKey {
        /// The new key.
        key: Box<crate::federation::WrappedFederationKey>,
        /// How long the replaced key stays published.
        publish_old_for_ms: u64,
    },
    /// [`Op::SetPairwiseSalt`] of a salt wrapped under the cluster's
    /// key-encryption key, unless one is set (first wins).
    SetWrappedPairwiseSalt {
        /// The salt's envelope.
        salt: Vec<u8>,
    },
    /// Replace stored secrets (kept in the clear by an earlier release, or
    /// wrapped under a previous key-encryption key) by envelopes of the
    /// same secrets under the current one. Each replaces only the stored
    /// form it names, so a second application changes nothing.
    RewrapSecrets {
        /// The secrets and their new envelopes.
        secrets: Vec<crate::sso::Rewrap>,
    },
    /// [`Op::CreateSession`] in a browser whose cookies prove session
    /// `previous` (a re-authentication: OWASP ASVS 5.0 V7.2.4 wants a new
    /// session token and the current one ended). Refused as
    /// `CreateSession` is. When made, the previous session ends as a
    /// sign-out ends it (its sites are told), except that, when it is the
    /// same user's, the tokens issued through it first move to the new
    /// session, so the apps signed in through this browser go on. A
    /// previous session that has already ended is no matter.
    ReplaceSession {
        /// The new session (timestamps are overwritten at apply).
        session: Box<Session>,
        /// Throttle key of the account name, whose failures are forgiven.
        account: SecretHash,
        /// Source address of the sign-in.
        source: String,
        /// Key of the session the browser held.
        previous: SecretHash,
    },
}

impl Op {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::CreateUser(_) => "create_user",
            Op::UpdateUser { .. } => "update_user",
            Op::SetUserDisabled { .. } => "set_user_disabled",
            Op::PurgeRequestResults { .. } => "purge_request_results",
            Op::CreateSession { .. } => "create_session",
            Op::TouchSession { .. } => "touch_session",
            Op::RevokeSession { .. } => "revoke_session",
            Op::AddSite(_) => "add_site",
            Op::RemoveSite { .. } => "remove_site",
            Op::SetTrust(_) => "set_trust",
            Op::RevokeTrust { .. } => "revoke_trust",
            Op::IssueTicket(_) => "issue_ticket",
            Op::RedeemTicket { .. } => "redeem_ticket",
            Op::RevokeToken { .. } => "revoke_token",
            Op::Refresh { .. } => "refresh",
            Op::StartDevice(_) => "start_device",
            Op::DecideDevice { .. } => "decide_device",
            Op::PollDevice { .. } => "poll_device",
            Op::RecordSignInFailure { .. } => "record_sign_in_failure",
            Op::AddSigningKey { .. } => "add_signing_key",
            Op::PurgeExpired => "purge_expired",
            Op::RevokeUserSessions { .. } => "revoke_user_sessions",
            Op::SetPairwiseSalt { .. } => "set_pairwise_salt",
            Op::RegisterSite { .. } => "register_site",
            Op::RecordFailedSignIn { .. } => "record_failed_sign_in",
            Op::Sweep { .. } => "sweep",
            Op::AddFederationKey { .. } => "add_federation_key",
            Op::AddPeerAgency(_) => "add_peer_agency",
            Op::RemovePeerAgency { .. } => "remove_peer_agency",
            Op::FederatedSignIn(_) => "federated_sign_in",
            Op::CompleteDeliveries { .. } => "complete_deliveries",
            Op::RepinPeer { .. } => "repin_peer",
            Op::AddTicketKey { .. } => "add_ticket_key",
            Op::RedeemSealedTicket { .. } => "redeem_sealed_ticket",
            Op::RegisterSiteWithAlg { .. } => "register_site",
            Op::RedeemForSealedAccess { .. } => "redeem_sealed_ticket",
            Op::RevokeSealedAccess { .. } => "revoke_token",
            Op::RedeemSealedOnce { .. } => "redeem_sealed_ticket",
            Op::AddWrappedTicketKey { .. } => "add_ticket_key",
            Op::AddWrappedFederationKey { .. } => "add_federation_key",
            Op::SetWrappedPairwiseSalt { .. } => "set_pairwise_salt",
            Op::RewrapSecrets { .. } => "rewrap_secrets",
            Op::ReplaceSession { .. } => "replace_session",
        }
    }
}

/// Fields of a new user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUser {
    /// Unique login name.
    pub username: String,
    /// Name shown to people.
    pub display_name: String,
    /// Contact address.
    pub email: Option<String>,
    /// Group memberships.
    pub groups: Vec<String>,
    /// Free-form attributes.
    pub attributes: BTreeMap<String, String>,
    /// argon2id PHC string, hashed by the receiving node before proposing.
    pub password_hash: Option<String>,
}

/// A partial update of a user; absent fields are left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPatch {
    /// New display name.
    pub display_name: Option<String>,
    /// New email (`Some(None)` clears it).
    pub email: Option<Option<String>>,
    /// New group list.
    pub groups: Option<Vec<String>>,
    /// Attributes to set (`Some`) or remove (`None`).
    pub attributes: BTreeMap<String, Option<String>>,
    /// New password hash.
    pub password_hash: Option<String>,
}

/// What a successfully applied command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The user record after the change.
    User(User),
    /// How many records were purged.
    Purged(u64),
    /// The session after the change.
    Session(Box<Session>),
    /// The site after the change.
    Site(Box<Site>),
    /// The trust relationship after the change.
    Trust(Box<Trust>),
    /// A successful ticket redemption.
    Granted(Box<Grant>),
    /// A revoked session.
    Revoked(RevokedSession),
    /// Something was removed (`true`) or was not there (`false`).
    Removed(bool),
    /// A command that produces nothing but success.
    Done,
    /// A device authorization not granted yet.
    DevicePending(DevicePoll),
    /// The device authorization a user code names (its client id).
    DeviceDecided(String),
    /// Entries that carry no command (blank and membership entries).
    Empty,
    /// Sessions ended together (a user's, e.g.).
    RevokedAll(Vec<RevokedSession>),
    /// What a sweep removed, and whether it went round to the start.
    Swept {
        /// Records removed.
        removed: u64,
        /// The cursor went past the last key: the next sweep starts over.
        wrapped: bool,
    },
}

impl Op {
    /// Whether a second application of the command would differ from the
    /// first (a one-time secret, a new record), so that a node's retry
    /// needs its first result remembered under a request id. Counting a
    /// failure twice or purging twice does not.
    pub fn needs_request_id(&self) -> bool {
        !matches!(
            self,
            Op::RecordSignInFailure { .. }
                | Op::RecordFailedSignIn { .. }
                | Op::TouchSession { .. }
                | Op::PurgeExpired
                | Op::PurgeRequestResults { .. }
                | Op::Sweep { .. }
                | Op::SetPairwiseSalt { .. }
                | Op::SetWrappedPairwiseSalt { .. }
                | Op::RewrapSecrets { .. }
                | Op::CompleteDeliveries { .. }
                | Op::RepinPeer { .. }
        )
    }

    /// Whether the command keeps what answers a retry of its request in
    /// its own records, so the state machine remembers no result for it.
    pub fn answers_its_own_retries(&self) -> bool {
        matches!(self, Op::RedeemSealedOnce { .. })
    }
}

/// Why the state machine refused a command. Refusals are deterministic: every
/// node refuses the same command the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApplyError {
    /// Stable error code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

impl ApplyError {
    /// Builds an error from a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The response of applying one command.
pub type CommandResult = Result<Outcome, ApplyError>;

/// Reads that may be served by any node, optionally after confirming
/// linearizability with the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Read this node's applied state (may lag by the replication delay).
    #[default]
    Local,
    /// Confirm with the leader that the read reflects every acknowledged write.
    Linearizable,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn request_ids() {
        assert!(valid_request_id("abcdefgh"));
        assert!(valid_request_id("0123-4567_89.ab"));
        assert!(!valid_request_id("short"));
        assert!(!valid_request_id("has space 123"));
        assert!(!valid_request_id(&"a".repeat(65)));
    }

    #[test]
    fn command_round_trips_through_codec() {
        let cmd = Command {
            request_id: Some("req-00000001".into()),
            time_ms: 1_700_000_000_000,
            op: Op::UpdateUser {
                username: "alice".into(),
                patch: UserPatch {
                    attributes: [("k".to_string(), Some("v".to_string()))].into(),
                    ..Default::default()
                },
            },
        };
        let bytes = codec::encode(&cmd).unwrap();
        assert_eq!(codec::decode::<Command>(&bytes).unwrap(), cmd);
    }

    #[test]
    fn display_names_only_the_operation() {
        let cmd = Command {
            request_id: None,
            time_ms: 1,
            op: Op::UpdateUser {
                username: "alice".into(),
                patch: UserPatch {
                    password_hash: Some("$argon2id$secret".into()),
                    ..Default::default()
                },
            },
        };
        assert_eq!(cmd.to_string(), "update_user");
    }
}
