//! Sealed values: a login ticket or an access token is its own record —
//! its contents encrypted and authenticated with AES-256-GCM under a ticket
//! key replicated through Raft — so issuing one writes nothing. A ticket
//! (session, site, redirect URI, nonce, PKCE challenge, scopes, expiry, a
//! random id) is replicated only when redeemed (its id marked spent); an
//! access token (session, user, site, scopes, issue time, expiry, a random
//! id) never is: it holds while its session, site and trust do, unless it
//! was revoked. Anyone without the key can neither read, make nor alter
//! either, and one kind never opens as the other (each binds its own label).
//! The ticket keys are stored wrapped under the cluster's key-encryption
//! key and opened here as they are loaded.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use baa_proto::codec;
use baa_proto::sso::{SealedAccess, SealedTicket};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::clock::now_ms;
use crate::error::NodeError;
use crate::kek::KekRing;
use crate::raft::state_machine::StateReader;

/// One kind of sealed value: the prefix it begins with (the format's
/// version) and the label bound to its seal.
struct Kind {
    prefix: &'static str,
    aad: &'static [u8],
    what: &'static str,
}

const TICKET: Kind = Kind {
    prefix: "t1.",
    aad: b"baa login ticket v1",
    what: "ticket",
};

const ACCESS: Kind = Kind {
    prefix: "a1.",
    aad: b"baa access token v1",
    what: "access token",
};

/// The most a sealed value's contents may weigh when opened.
const MAX_SEALED_BYTES: u64 = 8 * 1024;

/// Whether `value` is in the sealed access-token format (it may still not
/// open).
pub fn is_sealed_access(value: &str) -> bool {
    value.starts_with(ACCESS.prefix)
}

/// How long loaded keys are reused before the state is read again.
const CACHE_FOR: Duration = Duration::from_millis(500);

struct Loaded {
    at: Instant,
    current: Option<(String, Arc<LessSafeKey>)>,
    open: HashMap<String, Arc<LessSafeKey>>,
}

/// Seals and opens login tickets with the replicated ticket keys; cheap to
/// clone.
#[derive(Clone)]
pub struct TicketSealer {
    state: StateReader,
    kek: Arc<KekRing>,
    loaded: Arc<RwLock<Option<Arc<Loaded>>>>,
}

fn aead_key(bytes: &[u8; 32]) -> Option<Arc<LessSafeKey>> {
    let key = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
    Some(Arc::new(LessSafeKey::new(key)))
}

impl TicketSealer {
    /// A sealer reading keys from `state`, opened with `kek`.
    pub fn new(state: StateReader, kek: Arc<KekRing>) -> Self {
        Self {
            state,
            kek,
            loaded: Arc::new(RwLock::new(None)),
        }
    }

    /// Forgets the loaded keys (a key was added, or one is missing).
    pub fn invalidate(&self) {
        if let Ok(mut g) = self.loaded.write() {
            *g = None;
        }
    }

    fn load(&self) -> Result<Arc<Loaded>, NodeError> {
        if let Ok(g) = self.loaded.read() {
            if let Some(l) = g.as_ref().filter(|l| l.at.elapsed() < CACHE_FOR) {
                return Ok(l.clone());
            }
        }
        let (keys, current_kid) = self.state.ticket_keys()?;
        let now = now_ms();
        let mut open = HashMap::new();
        let mut current = None;
        for k in keys.iter().filter(|k| k.published_at(now)) {
            let k = self.kek.open_ticket_key(k)?;
            let Some(key) = aead_key(&k.key) else {
                continue;
            };
            if current_kid.as_deref() == Some(k.kid.as_str()) {
                current = Some((k.kid.clone(), key.clone()));
            }
            open.insert(k.kid.clone(), key);
        }
        let loaded = Arc::new(Loaded {
            at: Instant::now(),
            current,
            open,
        });
        if let Ok(mut g) = self.loaded.write() {
            *g = Some(loaded.clone());
        }
        Ok(loaded)
    }

    /// `t` sealed with the current ticket key: `t1.<kid>.<nonce ‖ ciphertext ‖ tag>`.
    pub fn seal(&self, t: &SealedTicket) -> Result<String, NodeError> {
        self.seal_as(&TICKET, t)
    }

    /// The contents of a ticket this agency sealed with a key it still
    /// keeps; `None` for anything else (altered in any byte, another
    /// agency's, a retired key's, not a ticket at all).
    pub fn open(&self, value: &str) -> Option<SealedTicket> {
        self.open_as(&TICKET, value)
    }

    /// An access token `a` sealed with the current ticket key:
    /// `a1.<kid>.<nonce ‖ ciphertext ‖ tag>`.
    pub fn seal_access(&self, a: &SealedAccess) -> Result<String, NodeError> {
        self.seal_as(&ACCESS, a)
    }

    /// The contents of an access token this agency sealed with a key it
    /// still keeps; `None` for anything else.
    pub fn open_access(&self, value: &str) -> Option<SealedAccess> {
        self.open_as(&ACCESS, value)
    }

    fn seal_as<T: serde::Serialize>(&self, kind: &Kind, t: &T) -> Result<String, NodeError> {
        let l = self.load()?;
        let (kid, key) = l.current.as_ref().ok_or_else(|| NodeError::BadRequest {
            code: baa_proto::ErrorCode::NoSigningKey,
            message: "the agency has no ticket key yet; run `baa cluster init` or wait".into(),
        })?;
        seal_with(kind, kid, key, t)
    }

    fn open_as<T: serde::de::DeserializeOwned>(&self, kind: &Kind, value: &str) -> Option<T> {
        open_with(kind, value, |kid| {
            let l = self.load().ok()?;
            l.open.get(kid).cloned()
        })
    }

    /// Whether a current ticket key exists.
    pub fn has_current(&self) -> Result<bool, NodeError> {
        Ok(self.load()?.current.is_some())
    }
}

/// `t` sealed as `kind` under `key`, whose id is `kid`.
fn seal_with<T: serde::Serialize>(
    kind: &Kind,
    kid: &str,
    key: &LessSafeKey,
    t: &T,
) -> Result<String, NodeError> {
    let mut data = codec::encode_with_limit(t, MAX_SEALED_BYTES)
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    let nonce_bytes = crate::secrets::random_bytes::<NONCE_LEN>();
    let nonce = Nonce::assume_unique_for_key(nonce_bytes);
    key.seal_in_place_append_tag(nonce, Aad::from(kind.aad), &mut data)
        .map_err(|_| NodeError::Internal(format!("sealing {} failed", kind.what)))?;
    let mut sealed = nonce_bytes.to_vec();
    sealed.extend(data);
    Ok(format!(
        "{}{kid}.{}",
        kind.prefix,
        URL_SAFE_NO_PAD.encode(sealed)
    ))
}

/// The contents of `value` sealed as `kind` under the key `key_of` finds
/// for its kid; `None` for anything else.
fn open_with<T: serde::de::DeserializeOwned>(
    kind: &Kind,
    value: &str,
    key_of: impl FnOnce(&str) -> Option<Arc<LessSafeKey>>,
) -> Option<T> {
    let (kid, body) = value.strip_prefix(kind.prefix)?.split_once('.')?;
    if kid.len() > 64 || body.len() > 2 * MAX_SEALED_BYTES as usize {
        return None;
    }
    let key = key_of(kid)?;
    let mut bytes = URL_SAFE_NO_PAD.decode(body).ok()?;
    if bytes.len() < NONCE_LEN {
        return None;
    }
    let mut data = bytes.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&bytes).ok()?;
    let plain = key
        .open_in_place(nonce, Aad::from(kind.aad), &mut data)
        .ok()?;
    codec::decode_with_limit(plain, MAX_SEALED_BYTES).ok()
}

/// One ticket key outside any replicated state, sealing and opening
/// tickets exactly as [`TicketSealer`] does. Exists for fuzzing and
/// property tests.
#[doc(hidden)]
pub struct FixedTicketKey {
    kid: String,
    key: Arc<LessSafeKey>,
}

impl FixedTicketKey {
    /// The key `key`, named `kid`.
    pub fn new(kid: &str, key: &[u8; 32]) -> Option<Self> {
        Some(Self {
            kid: kid.to_string(),
            key: aead_key(key)?,
        })
    }

    /// As [`TicketSealer::seal`].
    pub fn seal(&self, t: &SealedTicket) -> Result<String, NodeError> {
        seal_with(&TICKET, &self.kid, &self.key, t)
    }

    /// As [`TicketSealer::open`].
    pub fn open(&self, value: &str) -> Option<SealedTicket> {
        open_with(&TICKET, value, |kid| {
            (kid == self.kid).then(|| self.key.clone())
        })
    }

    /// As [`TicketSealer::open_access`].
    pub fn open_access(&self, value: &str) -> Option<SealedAccess> {
        open_with(&ACCESS, value, |kid| {
            (kid == self.kid).then(|| self.key.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baa_proto::command::Op;
    use baa_proto::sso::TicketKey;

    use crate::raft::state_machine::applied as state;

    fn clear_key(kid: &str, byte: u8) -> TicketKey {
        TicketKey {
            kid: kid.into(),
            key: [byte; 32],
            created_ms: 0,
            retired_ms: None,
            publish_until_ms: None,
        }
    }

    /// A ticket key wrapped under the test KEK.
    fn key(kid: &str, byte: u8) -> Op {
        let wrapped = crate::kek::test_kek()
            .wrap_ticket_key(&clear_key(kid, byte))
            .unwrap();
        Op::AddWrappedTicketKey {
            key: Box::new(wrapped),
            keep_old_for_ms: 1_000,
        }
    }

    /// A ticket key in the clear, as an earlier release added it.
    fn legacy_key(kid: &str, byte: u8) -> Op {
        Op::AddTicketKey {
            key: Box::new(clear_key(kid, byte)),
            keep_old_for_ms: 1_000,
        }
    }

    fn sealer(reader: StateReader) -> TicketSealer {
        TicketSealer::new(reader, crate::kek::test_kek())
    }

    /// A ticket sealed with the current key of a state made of `ops`.
    async fn sealed_by(ops: Vec<(u64, Op)>) -> String {
        let dir = tempfile::tempdir().unwrap();
        let sm = state(dir.path(), ops).await;
        sealer(sm.reader()).seal(&ticket()).unwrap()
    }

    /// A ticket sealed under a key an earlier release stored in the clear
    /// still opens once a wrapped key replaced it, and the wrapped one
    /// seals; under another KEK nothing seals and nothing opens.
    #[tokio::test]
    async fn keys_in_the_clear_and_wrapped_keys_work_together() {
        let now = now_ms();
        let sealed = sealed_by(vec![(now, legacy_key("k1", 1))]).await;
        let dir = tempfile::tempdir().unwrap();
        let sm = state(
            dir.path(),
            vec![(now, legacy_key("k1", 1)), (now, key("k2", 2))],
        )
        .await;
        let s = sealer(sm.reader());
        assert_eq!(s.open(&sealed), Some(ticket()));
        assert!(s.seal(&ticket()).unwrap().starts_with("t1.k2."));
        let (keys, _) = sm.reader().ticket_keys().unwrap();
        let k1 = keys.iter().find(|k| k.kid == "k1").unwrap();
        assert!(k1.retired_ms.is_some(), "the clear key was retired");
        let other = std::sync::Arc::new(KekRing::new(&[9; 32], &[]).unwrap());
        let wrong = TicketSealer::new(sm.reader(), other);
        assert!(wrong.seal(&ticket()).is_err());
        assert_eq!(wrong.open(&sealed), None);
    }

    fn ticket() -> SealedTicket {
        SealedTicket {
            id: [7; 16],
            session_key: [1; 32],
            client_id: "shop".into(),
            redirect_uri: "https://shop.example/cb".into(),
            nonce: Some("n".into()),
            code_challenge: Some("c".repeat(43)),
            scopes: vec!["openid".into()],
            issued_ms: 1,
            expires_ms: 60_001,
        }
    }

    #[tokio::test]
    async fn a_sealed_ticket_opens_whole_and_only_whole() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_ms();
        let sm = state(dir.path(), vec![(now, key("k1", 1))]).await;
        let sealer = sealer(sm.reader());
        let t = ticket();
        let sealed = sealer.seal(&t).unwrap();
        assert!(sealed.starts_with("t1.k1."), "{sealed}");
        assert_eq!(sealer.open(&sealed), Some(t.clone()));
        // Two seals of one ticket differ (a fresh nonce each).
        assert_ne!(sealer.seal(&t).unwrap(), sealed);
        // Any byte altered: refused.
        let body_at = "t1.k1.".len();
        for i in body_at..sealed.len() {
            let mut b = sealed.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(b).unwrap();
            assert_eq!(sealer.open(&altered), None, "byte {i} altered");
        }
        // Truncated, another kid, not a ticket at all: refused.
        for bad in [
            &sealed[..sealed.len() - 1],
            &sealed.replace("t1.k1.", "t1.k2."),
            &sealed.replace("t1.", "t2."),
            "t1.k1.",
            "t1..",
            "",
            "not a ticket",
        ] {
            assert_eq!(sealer.open(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_ticket_of_a_retired_key_opens_while_the_key_is_kept_only() {
        let now = now_ms();
        // k1 replaced by k2 long ago: k1 was kept for 1 s only.
        let sealed = sealed_by(vec![(now, key("k1", 1))]).await;
        let dir2 = tempfile::tempdir().unwrap();
        let sm = state(
            dir2.path(),
            vec![(now - 10_000, key("k1", 1)), (now - 5_000, key("k2", 2))],
        )
        .await;
        assert_eq!(sealer(sm.reader()).open(&sealed), None);
        // Replaced a moment ago: still kept, so it opens.
        let dir3 = tempfile::tempdir().unwrap();
        let sm = state(dir3.path(), vec![(now, key("k1", 1)), (now, key("k2", 2))]).await;
        let sealer = sealer(sm.reader());
        assert_eq!(sealer.open(&sealed), Some(ticket()));
        assert!(sealer.seal(&ticket()).unwrap().starts_with("t1.k2."));
    }

    /// An access token opens as one, never as a ticket, and a ticket never
    /// as an access token, though one key seals both.
    #[tokio::test]
    async fn access_tokens_and_tickets_never_open_as_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let sm = state(dir.path(), vec![(now_ms(), key("k1", 1))]).await;
        let sealer = sealer(sm.reader());
        let a = SealedAccess {
            id: [9; 16],
            grant: [7; 16],
            family: Some([3; 32]),
            session_key: [1; 32],
            user_id: 7,
            client_id: "shop".into(),
            scopes: vec!["openid".into()],
            issued_ms: 1,
            expires_ms: 3_600_001,
        };
        let token = sealer.seal_access(&a).unwrap();
        assert!(is_sealed_access(&token), "{token}");
        assert_eq!(sealer.open_access(&token), Some(a));
        assert_eq!(sealer.open(&token), None);
        assert_eq!(sealer.open(&token.replacen("a1.", "t1.", 1)), None);
        let ticket = sealer.seal(&ticket()).unwrap();
        assert_eq!(sealer.open_access(&ticket), None);
        assert_eq!(sealer.open_access(&ticket.replacen("t1.", "a1.", 1)), None);
    }

    fn any_ticket() -> impl proptest::strategy::Strategy<Value = SealedTicket> {
        use proptest::prelude::*;
        (
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            "\\PC{0,20}",
            "\\PC{0,40}",
            proptest::option::of("\\PC{0,20}"),
            proptest::option::of("[A-Za-z0-9_-]{43}"),
            proptest::collection::vec("[a-z]{1,10}", 0..4),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(
                    id,
                    session_key,
                    client_id,
                    redirect_uri,
                    nonce,
                    code_challenge,
                    scopes,
                    issued_ms,
                    expires_ms,
                )| SealedTicket {
                    id,
                    session_key,
                    client_id,
                    redirect_uri,
                    nonce,
                    code_challenge,
                    scopes,
                    issued_ms,
                    expires_ms,
                },
            )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Every ticket opens whole, never as an access token, and with
        /// any byte changed or any part cut off it never opens.
        #[test]
        fn a_sealed_ticket_opens_only_unaltered(
            t in any_ticket(),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            by in 1u8..,
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let key = FixedTicketKey::new("k1", &[1; 32]).unwrap();
            let sealed = key.seal(&t).unwrap();
            proptest::prop_assert_eq!(key.open(&sealed), Some(t));
            proptest::prop_assert_eq!(key.open_access(&sealed), None);
            let i = at.index(sealed.len());
            let mut altered = sealed.clone().into_bytes();
            altered[i] = altered[i].wrapping_add(by);
            if let Ok(altered) = String::from_utf8(altered) {
                proptest::prop_assert_eq!(key.open(&altered), None);
            }
            proptest::prop_assert_eq!(key.open(&sealed[..cut.index(sealed.len())]), None);
            let other = FixedTicketKey::new("k1", &[2; 32]).unwrap();
            proptest::prop_assert_eq!(other.open(&sealed), None);
        }

        /// Arbitrary strings never open, however ticket-like.
        #[test]
        fn arbitrary_strings_never_open(s in "(t1\\.k1\\.)?[A-Za-z0-9_-]{0,120}|\\PC{0,60}") {
            let key = FixedTicketKey::new("k1", &[1; 32]).unwrap();
            proptest::prop_assert_eq!(key.open(&s), None);
        }
    }
}
