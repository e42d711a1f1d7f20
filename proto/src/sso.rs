//! Single-sign-on records: sessions, partner sites (OIDC clients), trust
//! relationships, login tickets (authorization codes), access tokens, signing
//! keys and sign-in throttling. Secrets (session ids, tickets, tokens, client
//! secrets) appear here only as SHA-256 digests.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{
    validate_client_id, validate_registered_uri, validate_text, ValidationError, MAX_REDIRECT_URIS,
};

/// SHA-256 of a secret value; the only form in which secrets are stored.
pub type SecretHash = [u8; 32];

/// Hashes a secret for storage and lookup.
pub fn secret_hash(secret: &[u8]) -> SecretHash {
    Sha256::digest(secret).into()
}

/// The public session id (`sid` claim): derived from the session key, so it
/// names the session without revealing the cookie's secret.
pub fn public_sid(key: &SecretHash) -> String {
    let d = Sha256::digest([b"baa-sid:".as_slice(), key].concat());
    hex_lower(&d[..16])
}

/// How the authorization endpoint delivers a ticket to a site's redirect URI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseMode {
    /// In the redirect's query (OIDC Core §3.1.2.5: the default of `code`).
    #[default]
    Query,
    /// By an auto-submitting form (the seed's delivery).
    FormPost,
}

/// The JWS algorithm of a site's ID tokens (OIDC Dynamic Client
/// Registration's `id_token_signed_response_alg`), chosen at registration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IdTokenAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, the OIDC default.
    #[default]
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519 (RFC 8037).
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl IdTokenAlg {
    /// Every algorithm, as discovery lists them.
    pub const ALL: [IdTokenAlg; 3] = [Self::Rs256, Self::Es256, Self::EdDsa];

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

/// A site's settings kept apart from its registration record (which keeps
/// its stored shape): for now how tickets reach it when it does not ask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteOptions {
    /// The `response_mode` used when the request names none.
    pub default_response_mode: ResponseMode,
}

/// The agency's secret salt of pairwise identifiers (replicated, made once;
/// the state holds it wrapped, see `Op::SetWrappedPairwiseSalt`).
pub type PairwiseSalt = [u8; 32];

fn pairwise(label: &[u8], salt: &PairwiseSalt, user_id: u64, client_id: &str) -> [u8; 32] {
    Sha256::digest(
        [
            label,
            salt.as_slice(),
            &user_id.to_be_bytes(),
            client_id.as_bytes(),
        ]
        .concat(),
    )
    .into()
}

/// The per-site pseudonym of a user, shown as the account name: stable for
/// the pair, unlinkable across sites without the agency's salt.
pub fn pseudonym(salt: &PairwiseSalt, user_id: u64, client_id: &str) -> String {
    let d = pairwise(b"baa-pseudonym:", salt, user_id, client_id);
    format!("u-{}", hex_lower(&d[..6]))
}

/// The pairwise subject identifier (`sub`) of a user at a site where the
/// user chose a pseudonym (OIDC Core §8.1).
pub fn pairwise_sub(salt: &PairwiseSalt, user_id: u64, client_id: &str) -> String {
    hex_lower(&pairwise(b"baa-pairwise-sub:", salt, user_id, client_id)[..16])
}

/// What a site knows a user as: `sub` and account name.
pub fn subject(
    salt: &PairwiseSalt,
    user: &crate::model::User,
    client_id: &str,
    params: &LoginParams,
) -> (String, String) {
    match params.account_name {
        AccountName::Username => (user.id.to_string(), user.username.clone()),
        AccountName::Pseudonym => (
            pairwise_sub(salt, user.id, client_id),
            pseudonym(salt, user.id, client_id),
        ),
    }
}

/// Lower-case hex of `bytes`.
pub fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// A browser session at the agency, made by a successful sign-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// SHA-256 of the session secret carried in the SSO cookie.
    pub key: SecretHash,
    /// Public id of the session (`sid` claim, logout tokens).
    pub sid: String,
    /// The signed-in user.
    pub user_id: u64,
    /// The signed-in user's name.
    pub username: String,
    /// Name of the agency that issued the session.
    pub agency: String,
    /// When the session was made (ms since the Unix epoch).
    pub created_ms: u64,
    /// Last recorded use.
    pub last_seen_ms: u64,
    /// The session ends when unused for this long.
    pub idle_timeout_ms: u64,
    /// The session ends at this time whatever its use.
    pub absolute_expiry_ms: u64,
    /// When the user last authenticated (`auth_time`).
    pub auth_time_ms: u64,
    /// Authentication methods used (`amr`), e.g. `pwd`.
    pub methods: Vec<String>,
    /// Partner sites that received a ticket in this session (back-channel logout).
    pub sites: Vec<String>,
}

impl Session {
    /// Whether the session is alive at `now_ms`.
    pub fn alive_at(&self, now_ms: u64) -> bool {
        now_ms < self.absolute_expiry_ms
            && now_ms < self.last_seen_ms.saturating_add(self.idle_timeout_ms)
    }
}

/// A partner site: an OpenID Connect client of the agency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// `client_id`.
    pub client_id: String,
    /// Name shown to users.
    pub name: String,
    /// Registered login handlers (`redirect_uri`), matched exactly.
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may return to, matched exactly.
    pub post_logout_redirect_uris: Vec<String>,
    /// SHA-256 of the client secret; `None` for a public client (PKCE required).
    pub secret_hash: Option<SecretHash>,
    /// OIDC back-channel logout URI.
    pub backchannel_logout_uri: Option<String>,
    /// Scopes the site may ask for.
    pub allowed_scopes: Vec<String>,
    /// Registration time.
    pub created_ms: u64,
}

/// Which account name a site sees as `preferred_username`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccountName {
    /// The user's agency username.
    #[default]
    Username,
    /// A per-site pseudonym that links nothing across sites.
    Pseudonym,
}

/// The login parameters a user chose for one site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LoginParams {
    /// Account name the site sees.
    pub account_name: AccountName,
    /// Whether the site sees the display name (`name`).
    pub share_name: bool,
    /// Whether the site sees the email address (`email`).
    pub share_email: bool,
}

/// A trust relationship: the user approved the site with these parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trust {
    /// The user.
    pub user_id: u64,
    /// The site.
    pub client_id: String,
    /// Approved scopes.
    pub scopes: Vec<String>,
    /// Chosen login parameters.
    pub params: LoginParams,
    /// First approval.
    pub created_ms: u64,
    /// Last change.
    pub updated_ms: u64,
}

/// A one-time login ticket (OIDC authorization code), stored by hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginTicket {
    /// SHA-256 of the ticket value.
    pub hash: SecretHash,
    /// Session the ticket was made from.
    pub session_key: SecretHash,
    /// The site it is for.
    pub client_id: String,
    /// The exact redirect URI it was delivered to.
    pub redirect_uri: String,
    /// The site's nonce, echoed in the ID token.
    pub nonce: Option<String>,
    /// PKCE S256 challenge.
    pub code_challenge: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Issue time.
    pub issued_ms: u64,
    /// Not redeemable at or after this time.
    pub expires_ms: u64,
    /// Set by the first redemption.
    pub used: bool,
    /// Tokens issued by its redemption (revoked if it is presented again).
    pub tokens: Vec<SecretHash>,
}

/// A key that seals login tickets (AES-256-GCM), replicated and rotated:
/// the current one seals, older ones open what they sealed until it has
/// expired. In the clear: how a node holds it in memory, and how releases
/// before keys were wrapped stored it (`Op::AddTicketKey`); the state holds
/// a [`WrappedTicketKey`] now.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketKey {
    /// Key id (16 hex digits, random).
    pub kid: String,
    /// The 256-bit key.
    pub key: [u8; 32],
    /// When it was added.
    pub created_ms: u64,
    /// When a newer key replaced it.
    pub retired_ms: Option<u64>,
    /// It opens tickets until this time after retiring.
    pub publish_until_ms: Option<u64>,
}

rotating_key!(TicketKey);

/// A [`TicketKey`] as the replicated state holds it: the key wrapped under
/// the cluster's key-encryption key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedTicketKey {
    /// Key id (16 hex digits, random).
    pub kid: String,
    /// The key's envelope (see the node's `kek`). Read from a record of a
    /// release before keys were wrapped, the 32 clear bytes.
    pub key: Vec<u8>,
    /// When it was added.
    pub created_ms: u64,
    /// When a newer key replaced it.
    pub retired_ms: Option<u64>,
    /// It opens tickets until this time after retiring.
    pub publish_until_ms: Option<u64>,
}

rotating_key!(WrappedTicketKey);

impl TicketKey {
    /// The key as the state holds it, its secret stored as `stored` (an
    /// envelope; the clear bytes for a record of an earlier release).
    pub fn stored_as(self, stored: Vec<u8>) -> WrappedTicketKey {
        WrappedTicketKey {
            kid: self.kid,
            key: stored,
            created_ms: self.created_ms,
            retired_ms: self.retired_ms,
            publish_until_ms: self.publish_until_ms,
        }
    }
}

impl WrappedTicketKey {
    /// The key in the clear, its secret opened as `key`.
    pub fn opened_as(&self, key: [u8; 32]) -> TicketKey {
        TicketKey {
            kid: self.kid.clone(),
            key,
            created_ms: self.created_ms,
            retired_ms: self.retired_ms,
            publish_until_ms: self.publish_until_ms,
        }
    }
}

/// The kinds of secret the agency keeps wrapped under its key-encryption
/// key; each is bound to its kind (and key id) when wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecretKind {
    /// A [`SigningKey`]'s private key.
    SigningKey,
    /// A ticket key.
    TicketKey,
    /// A federation key's seed.
    FederationKey,
    /// The salt of pairwise identifiers (its "key id" is empty).
    PairwiseSalt,
}

impl SecretKind {
    /// The name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::SigningKey => "signing key",
            Self::TicketKey => "ticket key",
            Self::FederationKey => "federation key",
            Self::PairwiseSalt => "pairwise salt",
        }
    }
}

/// One stored secret replaced by another envelope of it (wrapped under the
/// current key-encryption key): see `Op::RewrapSecrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrap {
    /// What the secret is.
    pub kind: SecretKind,
    /// Its key id (empty for the pairwise salt).
    pub kid: String,
    /// The [`stored_fingerprint`] of the form it replaces: a secret stored
    /// otherwise (rewrapped meanwhile) is left alone.
    pub replaces: [u8; 32],
    /// The new envelope.
    pub wrapped: Vec<u8>,
}

/// The fingerprint of a stored secret's bytes (an envelope, or a secret in
/// the clear): how a [`Rewrap`] names the form it replaces.
pub fn stored_fingerprint(stored: &[u8]) -> [u8; 32] {
    Sha256::digest([b"baa stored secret v1\0".as_slice(), stored].concat()).into()
}

/// What a sealed login ticket holds: issuing it writes nothing, since the
/// ticket itself carries all its redemption checks (sealed by a ticket key,
/// so no one else can make or alter one); only its redemption is replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedTicket {
    /// Random id: what the redemption marks as spent.
    pub id: [u8; 16],
    /// Session the ticket was made from.
    pub session_key: SecretHash,
    /// The site it is for.
    pub client_id: String,
    /// The exact redirect URI it was delivered to.
    pub redirect_uri: String,
    /// The site's nonce, echoed in the ID token.
    pub nonce: Option<String>,
    /// PKCE S256 challenge.
    pub code_challenge: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Issue time.
    pub issued_ms: u64,
    /// Not redeemable at or after this time.
    pub expires_ms: u64,
}

/// What a sealed access token holds: it is its own record (nothing is
/// stored when it is issued). It holds while its session is alive, its site
/// and the user's trust in it were there when it was issued, and none of
/// its ids is on the revoked list (`Y/`): its own (revoked alone), its
/// ticket's (the ticket was presented again) or its refresh family's (a
/// refresh token of its grant was reused or revoked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedAccess {
    /// Random id: what revoking it alone records.
    pub id: [u8; 16],
    /// The id of the ticket whose redemption granted it.
    pub grant: [u8; 16],
    /// The family of the refresh token granted with it, if any.
    pub family: Option<SecretHash>,
    /// The session it belongs to.
    pub session_key: SecretHash,
    /// The user.
    pub user_id: u64,
    /// The site it was issued to.
    pub client_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Issue time: the time of the command that granted it.
    pub issued_ms: u64,
    /// Expiry.
    pub expires_ms: u64,
}

/// A sealed ticket's redemption, kept until the ticket has expired (and a
/// grace period): a second presentation is refused and revokes `tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpentTicket {
    /// The session it was redeemed in.
    pub session_key: SecretHash,
    /// The site that redeemed it.
    pub client_id: String,
    /// The tokens its redemption issued.
    pub tokens: Vec<SecretHash>,
    /// The record may go at this time.
    pub keep_until_ms: u64,
}

/// What [`crate::command::Op::RedeemSealedOnce`] keeps of a redemption,
/// under a key holding the time it may go and the ticket's id: a second
/// presentation of the ticket is refused and revokes what the first one
/// got, unless it is a retry of the same request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpentOnce {
    /// The first 16 bytes of the SHA-256 of the redeeming command's
    /// request id (all zero once a second redemption revoked its tokens).
    pub request: [u8; 16],
    /// The refresh token its redemption issued, if any.
    pub tokens: Vec<SecretHash>,
}

/// An opaque access token bound to a session, stored by hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessToken {
    /// SHA-256 of the token value.
    pub hash: SecretHash,
    /// The session it belongs to.
    pub session_key: SecretHash,
    /// The session's public id.
    pub sid: String,
    /// The user.
    pub user_id: u64,
    /// The site it was issued to.
    pub client_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Issue time.
    pub issued_ms: u64,
    /// Expiry.
    pub expires_ms: u64,
}

/// A refresh token, stored by hash. Tokens made from one another form a
/// family (RFC 6819 §5.2.2.3): presenting a used one revokes the family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshToken {
    /// SHA-256 of the token value.
    pub hash: SecretHash,
    /// The family: the hash of the first token of the chain.
    pub family: SecretHash,
    /// The browser session it continues.
    pub session_key: SecretHash,
    /// The app (client) it was issued to.
    pub client_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Issue time.
    pub issued_ms: u64,
    /// Expiry.
    pub expires_ms: u64,
    /// Set when it was exchanged for a new pair.
    pub used: bool,
}

/// Where a device authorization (RFC 8628) stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceStatus {
    /// Waiting for the user.
    Pending,
    /// The user approved it from this browser session.
    Approved {
        /// The approving session.
        session_key: SecretHash,
    },
    /// The user declined.
    Denied,
    /// Tokens were handed out.
    Done,
}

/// A device authorization request, stored by the hash of its device code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGrant {
    /// SHA-256 of the device code.
    pub device_hash: SecretHash,
    /// The user code, normalised (upper case, no separator).
    pub user_code: String,
    /// The app.
    pub client_id: String,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Issue time.
    pub issued_ms: u64,
    /// Expiry.
    pub expires_ms: u64,
    /// Minimum seconds between polls.
    pub interval_s: u64,
    /// Time of the last poll.
    pub last_poll_ms: u64,
    /// Where it stands.
    pub status: DeviceStatus,
}

/// Normalises a user code as typed: letters only, upper case.
pub fn normalise_user_code(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// An RSA signing key of the agency (ID tokens, logout tokens, SSO cookies).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    /// Key id (`kid`).
    pub kid: String,
    /// The envelope of the private key's PKCS#1 DER, wrapped under the
    /// cluster's key-encryption key (see the node's `kek`); stored by a
    /// release before keys were wrapped, the DER in the clear.
    pub private_der: Vec<u8>,
    /// Public modulus, big-endian.
    pub n: Vec<u8>,
    /// Public exponent, big-endian.
    pub e: Vec<u8>,
    /// When it was added.
    pub created_ms: u64,
    /// When a newer key replaced it as the current one.
    pub retired_ms: Option<u64>,
    /// It stays published (verifiable) until this time after retiring.
    pub publish_until_ms: Option<u64>,
}

rotating_key!(SigningKey);

/// What sign-in throttling counts against: an account name or a source address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThrottleSubject {
    /// SHA-256 of the lower-cased account name as typed (known or not, so the
    /// state reveals nothing about which accounts exist).
    Account(SecretHash),
    /// Source IP address as text.
    Source(String),
    /// One account name tried from one source address: a targeted lock
    /// that leaves the account to everyone else.
    Pair(SecretHash, String),
}

impl ThrottleSubject {
    /// Storage key suffix.
    pub fn key(&self) -> Vec<u8> {
        match self {
            ThrottleSubject::Account(h) => [b"a:".as_slice(), h].concat(),
            ThrottleSubject::Source(ip) => [b"s:".as_slice(), ip.as_bytes()].concat(),
            ThrottleSubject::Pair(h, ip) => [b"p:".as_slice(), h, ip.as_bytes()].concat(),
        }
    }

    /// The subjects a sign-in of `account` from `source` is checked and
    /// counted against.
    pub fn of_sign_in(account: &SecretHash, source: &str) -> [ThrottleSubject; 3] {
        [
            ThrottleSubject::Pair(*account, source.to_string()),
            ThrottleSubject::Account(*account),
            ThrottleSubject::Source(source.to_string()),
        ]
    }
}

/// Throttling policy carried in the command, so every node applies the same
/// one: per (account, source) pair with progressive locks, and high limits
/// per account (all sources) and per source that no single outsider turns
/// into a lock-out of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottlePolicy {
    /// Failures counted within this window.
    pub window_ms: u64,
    /// Failures of one account from one source that lock that pair: first
    /// for `lockout_ms / 16`, twice as long at each further failure, up to
    /// `lockout_ms`.
    pub max_pair_failures: u32,
    /// Failures of one account from all sources that lock it for everyone.
    pub max_account_failures: u32,
    /// Failures from one source address that lock it.
    pub max_source_failures: u32,
    /// The longest lock.
    pub lockout_ms: u64,
}

/// Failed sign-ins counted for one subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Failures {
    /// Failures in the current window.
    pub count: u32,
    /// Start of the current window.
    pub window_start_ms: u64,
    /// Sign-in is refused until this time.
    pub locked_until_ms: u64,
}

/// Throttling rule carried in the command, so every node applies the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleRule {
    /// Failures counted within this window.
    pub window_ms: u64,
    /// Failures of one account that lock it.
    pub max_account_failures: u32,
    /// Failures from one source address that lock it.
    pub max_source_failures: u32,
    /// How long a lock lasts.
    pub lockout_ms: u64,
}

impl Failures {
    /// Counts one failure at `now_ms` under `rule` with limit `max`.
    pub fn record(mut self, now_ms: u64, rule: &ThrottleRule, max: u32) -> Self {
        if now_ms >= self.window_start_ms.saturating_add(rule.window_ms) {
            self.count = 0;
            self.window_start_ms = now_ms;
        }
        self.count = self.count.saturating_add(1);
        if self.count >= max {
            self.locked_until_ms = now_ms.saturating_add(rule.lockout_ms);
            self.count = 0;
            self.window_start_ms = now_ms;
        }
        self
    }

    /// Counts one failure of an (account, source) pair: past the limit each
    /// failure locks the pair, for twice as long as the one before (from a
    /// sixteenth of the lockout to all of it).
    pub fn record_progressive(mut self, now_ms: u64, p: &ThrottlePolicy) -> Self {
        if now_ms >= self.window_start_ms.saturating_add(p.window_ms)
            && now_ms >= self.locked_until_ms
        {
            self.count = 0;
            self.window_start_ms = now_ms;
        }
        self.count = self.count.saturating_add(1);
        let max = p.max_pair_failures.max(1);
        if self.count >= max {
            let doublings = (self.count - max).min(4);
            let lock = (p.lockout_ms / 16).saturating_mul(1 << doublings);
            self.locked_until_ms = now_ms.saturating_add(lock.min(p.lockout_ms).max(1_000));
        }
        self
    }

    /// Whether sign-in is refused at `now_ms`.
    pub fn locked_at(&self, now_ms: u64) -> bool {
        now_ms < self.locked_until_ms
    }
}

/// What the token endpoint needs after a successful redemption, returned by
/// the state machine so the answering node need not have applied it locally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The user (password hash removed).
    pub user: crate::model::User,
    /// The session.
    pub sid: String,
    /// `auth_time`, ms.
    pub auth_time_ms: u64,
    /// The site.
    pub client_id: String,
    /// The ticket's nonce.
    pub nonce: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// The user's login parameters for the site.
    pub params: LoginParams,
    /// Expiry of the access token.
    pub expires_ms: u64,
}

/// Outcome of a device poll that was not yet granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DevicePoll {
    /// Keep polling.
    Pending,
    /// Polling too fast; the interval is now this many seconds.
    SlowDown(u64),
}

/// Outcome of revoking a session: who must hear of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedSession {
    /// Public id of the session.
    pub sid: String,
    /// The user.
    pub user_id: u64,
    /// Sites that got tickets in the session.
    pub sites: Vec<String>,
    /// How many access tokens went with it.
    pub tokens_revoked: u64,
}

/// A back-channel logout still to deliver: a session ended, and a site
/// (or peer agency) that got a ticket in it must hear of it. Kept in the
/// replicated outbox until the leader delivered it or gave up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// Its place in the outbox (assigned in log order).
    pub id: u64,
    /// The site to tell.
    pub client_id: String,
    /// The ended session's public id.
    pub sid: String,
    /// The session's user.
    pub user_id: u64,
    /// When the session ended.
    pub created_ms: u64,
}

/// Checks a partner site before it is stored.
pub fn validate_site(site: &Site) -> Result<(), ValidationError> {
    validate_client_id(&site.client_id)?;
    validate_text("name", &site.name)?;
    if site.redirect_uris.is_empty() || site.redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(ValidationError(format!(
            "a site needs 1-{MAX_REDIRECT_URIS} redirect URIs"
        )));
    }
    if site.post_logout_redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(ValidationError(format!(
            "at most {MAX_REDIRECT_URIS} post-logout redirect URIs"
        )));
    }
    for u in &site.redirect_uris {
        validate_registered_uri("redirect_uri", u)?;
    }
    for u in &site.post_logout_redirect_uris {
        validate_registered_uri("post_logout_redirect_uri", u)?;
    }
    if let Some(u) = &site.backchannel_logout_uri {
        validate_registered_uri("backchannel_logout_uri", u)?;
    }
    if site.allowed_scopes.len() > 32
        || site.allowed_scopes.iter().any(|s| {
            s.is_empty()
                || s.len() > 64
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        })
    {
        return Err(ValidationError(
            "allowed_scopes: up to 32 scope tokens".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_locks_grow_with_each_failure_up_to_the_lockout() {
        let p = ThrottlePolicy {
            window_ms: 10_000_000,
            max_pair_failures: 3,
            max_account_failures: 100,
            max_source_failures: 50,
            lockout_ms: 320_000,
        };
        let mut f = Failures::default();
        let mut now = 1_000;
        for _ in 0..2 {
            f = f.record_progressive(now, &p);
            assert!(!f.locked_at(now));
        }
        let mut locks = Vec::new();
        for _ in 0..7 {
            f = f.record_progressive(now, &p);
            locks.push(f.locked_until_ms - now);
            now = f.locked_until_ms;
        }
        assert_eq!(
            locks,
            [20_000, 40_000, 80_000, 160_000, 320_000, 320_000, 320_000]
        );
    }

    #[test]
    fn throttle_locks_after_max_and_window_resets() {
        let rule = ThrottleRule {
            window_ms: 1000,
            max_account_failures: 3,
            max_source_failures: 10,
            lockout_ms: 5000,
        };
        let mut f = Failures::default();
        f = f.record(10, &rule, 3);
        f = f.record(20, &rule, 3);
        assert!(!f.locked_at(20));
        f = f.record(30, &rule, 3);
        assert!(f.locked_at(31));
        assert!(!f.locked_at(5030));
        // Failures outside the window start a new count.
        let mut g = Failures::default().record(0, &rule, 3).record(10, &rule, 3);
        g = g.record(2000, &rule, 3);
        assert_eq!(g.count, 1);
    }

    #[test]
    fn sid_is_stable_and_not_the_key() {
        let key = secret_hash(b"secret");
        assert_eq!(public_sid(&key), public_sid(&key));
        assert_eq!(public_sid(&key).len(), 32);
        assert_ne!(public_sid(&key), hex_lower(&key[..16]));
    }
}
