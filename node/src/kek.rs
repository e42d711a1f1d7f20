//! The key-encryption key (KEK): the agency's secrets at rest — the signing
//! keys' private keys, the ticket keys, the federation keys' seeds and the
//! salt of pairwise identifiers — are wrapped under a key that every node of
//! the cluster shares and reads from a file or the environment, never from
//! the replicated state. The Raft log, the state's database, its snapshots
//! and any copy of a data directory hold envelopes only.
//!
//! An envelope is `baaK`, a version byte (1), the KEK's id (8 bytes: see
//! [`kek_id`]), a random 96-bit nonce, then the secret sealed under the KEK
//! with AES-256-GCM and its 16-byte tag. The sealed additional data binds
//! what the secret is (its kind and key id) and the header, so an envelope
//! opens only as the secret it was made for. A secret that a release before
//! keys were wrapped stored is in the clear: a signing key's PKCS#1 DER
//! (which begins with 0x30, an envelope with `b`) or 32 bytes (an envelope
//! of 32 bytes takes 73). Such a secret is still used, and the leader
//! wraps it (`Op::RewrapSecrets`), as it does a secret wrapped under a
//! previous KEK after a rotation.
//!
//! Keys are wrapped where they are made, on the node that proposes them;
//! nodes open them where they load them into memory (`keys`, `sealing`,
//! `key_rotation`). Neither a KEK nor a secret is ever logged: errors name
//! KEK ids and key ids only.

use std::path::Path;

use anyhow::Context;
use baa_proto::federation::{FederationKey, WrappedFederationKey};
use baa_proto::sso::{PairwiseSalt, SecretKind, SigningKey, TicketKey, WrappedTicketKey};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::{Digest, Sha256};

use crate::config::SecretsConfig;

/// The environment variable holding the current KEK; it takes precedence
/// over `[secrets] kek_file`.
pub const ENV_KEK: &str = "BAA_KEK";

/// The environment variable holding previous KEKs, comma-separated; it
/// takes precedence over `[secrets] previous_kek_files`.
pub const ENV_PREVIOUS_KEKS: &str = "BAA_PREVIOUS_KEKS";

const MAGIC: &[u8; 4] = b"baaK";
const VERSION: u8 = 1;
const ID_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// Magic, version and KEK id: bound to the seal.
const BOUND_LEN: usize = MAGIC.len() + 1 + ID_LEN;
const HEADER_LEN: usize = BOUND_LEN + NONCE_LEN;

/// A KEK's id: public, in every envelope and error message.
pub type KekId = [u8; ID_LEN];

/// The id of `kek`: the first 8 bytes of SHA-256 over a label and the key.
pub fn kek_id(kek: &[u8; 32]) -> KekId {
    let h = Sha256::digest([b"baa kek id v1\0".as_slice(), kek].concat());
    let mut id = [0; ID_LEN];
    id.copy_from_slice(&h[..ID_LEN]);
    id
}

/// The label a kind of secret is bound to (part of the format).
fn label(kind: SecretKind) -> &'static [u8] {
    match kind {
        SecretKind::SigningKey => b"signing key",
        SecretKind::TicketKey => b"ticket key",
        SecretKind::FederationKey => b"federation key",
        SecretKind::PairwiseSalt => b"pairwise salt",
    }
}

fn aad(kind: SecretKind, kid: &str, bound: &[u8]) -> Vec<u8> {
    [
        b"baa wrapped secret v1\0".as_slice(),
        label(kind),
        b"\0",
        kid.as_bytes(),
        b"\0",
        bound,
    ]
    .concat()
}

/// Whether `stored` has the shape of a secret of `kind` in the clear.
fn clear_shape(kind: SecretKind, stored: &[u8]) -> bool {
    match kind {
        SecretKind::SigningKey => stored.first() == Some(&0x30),
        SecretKind::TicketKey | SecretKind::FederationKey | SecretKind::PairwiseSalt => {
            stored.len() == 32
        }
    }
}

/// How a secret is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// In the clear (stored by a release before keys were wrapped).
    Clear,
    /// Wrapped under the KEK with this id.
    Wrapped(KekId),
}

/// How `stored`, a secret of `kind`, is stored; `None` if it is neither
/// an envelope of a known version nor a secret in the clear.
pub fn form(kind: SecretKind, stored: &[u8]) -> Option<Form> {
    if stored.len() >= HEADER_LEN + TAG_LEN && stored.starts_with(MAGIC) {
        if stored[MAGIC.len()] != VERSION {
            return None;
        }
        let mut id = [0; ID_LEN];
        id.copy_from_slice(&stored[MAGIC.len() + 1..BOUND_LEN]);
        return Some(Form::Wrapped(id));
    }
    clear_shape(kind, stored).then_some(Form::Clear)
}

/// The fingerprint of a stored secret (an envelope, or one in the clear)
/// that `Op::RewrapSecrets` names the form it replaces by.
pub fn fingerprint(stored: &[u8]) -> [u8; 32] {
    baa_proto::sso::stored_fingerprint(stored)
}

/// Why a stored secret does not open. Names KEK ids and key ids only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KekError {
    /// Wrapped under a KEK this node was not given.
    #[error(
        "the {what} is wrapped under key-encryption key {found}, which this node does not have \
         (it has {have}): every node of a cluster needs the cluster's KEK — set [secrets] \
         kek_file or {ENV_KEK} (and, while rotating, previous_kek_files or {ENV_PREVIOUS_KEKS})"
    )]
    UnknownKek {
        /// The secret (kind and key id).
        what: String,
        /// The id of the KEK it is wrapped under.
        found: String,
        /// The ids of this node's KEKs.
        have: String,
    },
    /// The envelope does not open under the KEK it names.
    #[error(
        "the {what} does not open under key-encryption key {kek}: its envelope was altered, or \
         made for another secret"
    )]
    Tampered {
        /// The secret.
        what: String,
        /// The KEK id the envelope names.
        kek: String,
    },
    /// Neither an envelope nor a secret in the clear.
    #[error("the stored {what} is neither an envelope of a known version nor a key in the clear")]
    Malformed {
        /// The secret.
        what: String,
    },
}

impl From<KekError> for crate::error::NodeError {
    fn from(e: KekError) -> Self {
        crate::error::NodeError::Internal(e.to_string())
    }
}

fn what(kind: SecretKind, kid: &str) -> String {
    match kid {
        "" => kind.name().to_string(),
        kid => format!("{} {kid}", kind.name()),
    }
}

/// One KEK, ready to seal and open.
struct Kek {
    id: KekId,
    key: LessSafeKey,
}

impl Kek {
    fn new(bytes: &[u8; 32]) -> anyhow::Result<Self> {
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| anyhow::anyhow!("AES-256-GCM refused a 32-byte key"))?;
        Ok(Self {
            id: kek_id(bytes),
            key: LessSafeKey::new(key),
        })
    }
}

/// Where a stored secret stands against this node's KEKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Wrapped under the current KEK: nothing to do.
    Current,
    /// In the clear, or wrapped under a previous KEK: to be rewrapped.
    Stale,
}

/// The current KEK, which wraps, and the previous ones, which still open
/// what they wrapped until the leader has rewrapped it.
pub struct KekRing {
    current: Kek,
    previous: Vec<Kek>,
}

impl std::fmt::Debug for KekRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KekRing({})", self.ids())
    }
}

impl KekRing {
    /// A ring of `current` and `previous` KEKs.
    pub fn new(current: &[u8; 32], previous: &[[u8; 32]]) -> anyhow::Result<Self> {
        let current = Kek::new(current)?;
        let mut ids = vec![current.id];
        let mut prev = Vec::new();
        for p in previous {
            let k = Kek::new(p)?;
            anyhow::ensure!(
                !ids.contains(&k.id),
                "key-encryption key {} is given twice (as current or previous)",
                hex::encode(k.id)
            );
            ids.push(k.id);
            prev.push(k);
        }
        Ok(Self {
            current,
            previous: prev,
        })
    }

    /// Reads the KEKs as configured: [`ENV_KEK`] or else `kek_file` (one is
    /// required), and [`ENV_PREVIOUS_KEKS`] or else `previous_kek_files`.
    /// `env` reads an environment variable.
    pub fn load(cfg: &SecretsConfig, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let current = match (env(ENV_KEK), &cfg.kek_file) {
            (Some(v), _) => parse_kek(&v).with_context(|| format!("reading {ENV_KEK}"))?,
            (None, Some(path)) => read_kek_file(path)?,
            (None, None) => anyhow::bail!(
                "no key-encryption key: set [secrets] kek_file in the configuration (a file of \
                 32 random bytes, hex or base64, e.g. from `baa kek new --out FILE`) or the \
                 {ENV_KEK} environment variable; every node of the cluster needs the same one"
            ),
        };
        let previous = match env(ENV_PREVIOUS_KEKS) {
            Some(v) => v
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .enumerate()
                .map(|(i, s)| {
                    parse_kek(s).with_context(|| format!("reading {ENV_PREVIOUS_KEKS} (item {i})"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => cfg
                .previous_kek_files
                .iter()
                .map(|p| read_kek_file(p))
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        Self::new(&current, &previous)
    }

    /// The current KEK's id, hex.
    pub fn current_id(&self) -> String {
        hex::encode(self.current.id)
    }

    /// Every KEK id, the current one first, for messages.
    pub fn ids(&self) -> String {
        let mut s = format!("{} (current)", self.current_id());
        for p in &self.previous {
            s.push_str(", ");
            s.push_str(&hex::encode(p.id));
        }
        s
    }

    fn find(&self, id: &KekId) -> Option<&Kek> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| &k.id == id)
    }

    /// `secret`, a secret of `kind` with key id `kid`, wrapped under the
    /// current KEK.
    pub fn wrap(&self, kind: SecretKind, kid: &str, secret: &[u8]) -> Result<Vec<u8>, KekError> {
        let nonce = crate::secrets::random_bytes::<NONCE_LEN>();
        let mut out = Vec::with_capacity(HEADER_LEN + secret.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.current.id);
        let aad = aad(kind, kid, &out);
        out.extend_from_slice(&nonce);
        let mut sealed = secret.to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut sealed,
            )
            .map_err(|_| KekError::Malformed {
                what: what(kind, kid),
            })?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The secret `stored` holds (an envelope, or the secret in the clear).
    pub fn open(&self, kind: SecretKind, kid: &str, stored: &[u8]) -> Result<Vec<u8>, KekError> {
        let id = match form(kind, stored) {
            Some(Form::Clear) => return Ok(stored.to_vec()),
            Some(Form::Wrapped(id)) => id,
            None => {
                return Err(KekError::Malformed {
                    what: what(kind, kid),
                })
            }
        };
        let kek = self.find(&id).ok_or_else(|| KekError::UnknownKek {
            what: what(kind, kid),
            found: hex::encode(id),
            have: self.ids(),
        })?;
        let tampered = || KekError::Tampered {
            what: what(kind, kid),
            kek: hex::encode(id),
        };
        let nonce = Nonce::try_assume_unique_for_key(&stored[BOUND_LEN..HEADER_LEN])
            .map_err(|_| tampered())?;
        let mut data = stored[HEADER_LEN..].to_vec();
        let plain = kek
            .key
            .open_in_place(
                nonce,
                Aad::from(aad(kind, kid, &stored[..BOUND_LEN])),
                &mut data,
            )
            .map_err(|_| tampered())?;
        Ok(plain.to_vec())
    }

    /// Whether `stored` is wrapped under the current KEK, or is to be
    /// rewrapped; an error if this node cannot open it at all.
    pub fn standing(
        &self,
        kind: SecretKind,
        kid: &str,
        stored: &[u8],
    ) -> Result<Standing, KekError> {
        match form(kind, stored) {
            Some(Form::Wrapped(id)) if id == self.current.id => Ok(Standing::Current),
            Some(Form::Wrapped(id)) if self.find(&id).is_none() => Err(KekError::UnknownKek {
                what: what(kind, kid),
                found: hex::encode(id),
                have: self.ids(),
            }),
            Some(_) => Ok(Standing::Stale),
            None => Err(KekError::Malformed {
                what: what(kind, kid),
            }),
        }
    }

    /// A 32-byte secret opened.
    fn open_32(&self, kind: SecretKind, kid: &str, stored: &[u8]) -> Result<[u8; 32], KekError> {
        self.open(kind, kid, stored)?
            .try_into()
            .map_err(|_| KekError::Malformed {
                what: what(kind, kid),
            })
    }

    /// The PKCS#1 DER of signing key `k`.
    pub fn open_signing_key(&self, k: &SigningKey) -> Result<Vec<u8>, KekError> {
        self.open(SecretKind::SigningKey, &k.kid, &k.private_der)
    }

    /// `k` (its private key in the clear) with its private key wrapped.
    pub fn wrap_signing_key(&self, mut k: SigningKey) -> Result<SigningKey, KekError> {
        k.private_der = self.wrap(SecretKind::SigningKey, &k.kid, &k.private_der)?;
        Ok(k)
    }

    /// Ticket key `k` opened.
    pub fn open_ticket_key(&self, k: &WrappedTicketKey) -> Result<TicketKey, KekError> {
        Ok(k.opened_as(self.open_32(SecretKind::TicketKey, &k.kid, &k.key)?))
    }

    /// Ticket key `k` wrapped.
    pub fn wrap_ticket_key(&self, k: &TicketKey) -> Result<WrappedTicketKey, KekError> {
        let wrapped = self.wrap(SecretKind::TicketKey, &k.kid, &k.key)?;
        Ok(k.clone().stored_as(wrapped))
    }

    /// Federation key `k` opened.
    pub fn open_federation_key(&self, k: &WrappedFederationKey) -> Result<FederationKey, KekError> {
        Ok(k.opened_as(self.open_32(SecretKind::FederationKey, &k.kid, &k.seed)?))
    }

    /// Federation key `k` wrapped.
    pub fn wrap_federation_key(&self, k: &FederationKey) -> Result<WrappedFederationKey, KekError> {
        let wrapped = self.wrap(SecretKind::FederationKey, &k.kid, &k.seed)?;
        Ok(k.clone().stored_as(wrapped))
    }

    /// The pairwise salt stored as `stored`, opened.
    pub fn open_salt(&self, stored: &[u8]) -> Result<PairwiseSalt, KekError> {
        self.open_32(SecretKind::PairwiseSalt, "", stored)
    }

    /// The pairwise salt wrapped.
    pub fn wrap_salt(&self, salt: &PairwiseSalt) -> Result<Vec<u8>, KekError> {
        self.wrap(SecretKind::PairwiseSalt, "", salt)
    }
}

/// A KEK as written in a file or the environment: 32 bytes as 64 hex
/// digits or as base64 (standard or URL-safe, padded or not), surrounding
/// whitespace ignored. Errors never repeat the value.
pub fn parse_kek(text: &str) -> anyhow::Result<[u8; 32]> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let t = text.trim();
    let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(t).ok()
    } else {
        [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(t).ok())
    };
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "a key-encryption key is 32 random bytes written as 64 hex digits or as base64 \
             (`baa kek new --out FILE`, or `openssl rand -hex 32`)"
            )
        })
}

/// Permission bits that make a KEK file unacceptable: anyone but its owner
/// may write it, or others may read it.
const REFUSED_MODE: u32 = 0o026;

/// Reads a KEK file, refusing one that others may read or that anyone but
/// its owner may write, and warning when its group may read it.
pub fn read_kek_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading key-encryption key file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    anyhow::ensure!(
        mode & REFUSED_MODE == 0,
        "key-encryption key file {} has mode {mode:03o}: others may read it or someone but its \
         owner may write it; `chmod 600` it",
        path.display()
    );
    if mode & 0o040 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{mode:03o}"),
            "the key-encryption key file is readable by its group"
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading key-encryption key file {}", path.display()))?;
    parse_kek(&text).with_context(|| format!("reading {}", path.display()))
}

/// Writes a new random KEK to `path` (hex, mode 0600), refusing to replace
/// a file; answers its id.
pub fn write_new_kek_file(path: &Path) -> anyhow::Result<String> {
    let kek = crate::secrets::random_bytes::<32>();
    crate::secrets::create_private_file(path, format!("{}\n", hex::encode(kek)).as_bytes())?;
    Ok(hex::encode(kek_id(&kek)))
}

/// The KEK of unit tests.
#[cfg(test)]
pub(crate) fn test_kek() -> std::sync::Arc<KekRing> {
    std::sync::Arc::new(KekRing::new(&[0x4b; 32], &[]).unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(byte: u8) -> KekRing {
        KekRing::new(&[byte; 32], &[]).unwrap()
    }

    #[test]
    fn a_wrapped_secret_opens_whole_and_holds_nothing_of_it_in_the_clear() {
        let kek = ring(1);
        let secret = crate::secrets::random_bytes::<32>();
        let wrapped = kek.wrap(SecretKind::TicketKey, "k1", &secret).unwrap();
        assert_eq!(wrapped.len(), HEADER_LEN + 32 + TAG_LEN);
        assert!(!wrapped
            .windows(8)
            .any(|w| secret.windows(8).any(|s| s == w)));
        assert_eq!(
            form(SecretKind::TicketKey, &wrapped),
            Some(Form::Wrapped(kek_id(&[1; 32])))
        );
        assert_eq!(
            kek.open(SecretKind::TicketKey, "k1", &wrapped).unwrap(),
            secret
        );
        // A fresh nonce each time.
        assert_ne!(
            kek.wrap(SecretKind::TicketKey, "k1", &secret).unwrap(),
            wrapped
        );
        assert_eq!(
            kek.standing(SecretKind::TicketKey, "k1", &wrapped),
            Ok(Standing::Current)
        );
    }

    #[test]
    fn a_wrong_kek_is_named_by_its_id_and_the_expected_one() {
        let (a, b) = (ring(1), ring(2));
        let wrapped = a
            .wrap(SecretKind::SigningKey, "kid-1", &[0x30; 40])
            .unwrap();
        let e = b
            .open(SecretKind::SigningKey, "kid-1", &wrapped)
            .unwrap_err();
        assert!(matches!(e, KekError::UnknownKek { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&a.current_id()), "{msg}");
        assert!(msg.contains(&b.current_id()), "{msg}");
        assert!(msg.contains("signing key kid-1"), "{msg}");
        assert!(msg.contains("kek_file") && msg.contains(ENV_KEK), "{msg}");
        assert_eq!(
            b.standing(SecretKind::SigningKey, "kid-1", &wrapped),
            Err(e)
        );
        // With the old KEK as a previous one, it opens and is stale.
        let rotated = KekRing::new(&[2; 32], &[[1; 32]]).unwrap();
        assert_eq!(
            rotated
                .open(SecretKind::SigningKey, "kid-1", &wrapped)
                .unwrap(),
            vec![0x30; 40]
        );
        assert_eq!(
            rotated.standing(SecretKind::SigningKey, "kid-1", &wrapped),
            Ok(Standing::Stale)
        );
    }

    #[test]
    fn an_altered_envelope_or_another_secrets_does_not_open() {
        let kek = ring(1);
        let wrapped = kek.wrap(SecretKind::FederationKey, "f1", &[7; 32]).unwrap();
        for i in 0..wrapped.len() {
            let mut bad = wrapped.clone();
            bad[i] ^= 0x01;
            assert!(
                kek.open(SecretKind::FederationKey, "f1", &bad).is_err(),
                "byte {i} altered"
            );
        }
        assert!(kek
            .open(
                SecretKind::FederationKey,
                "f1",
                &wrapped[..wrapped.len() - 1]
            )
            .is_err());
        // Bound to its kind and key id.
        for (kind, kid) in [
            (SecretKind::FederationKey, "f2"),
            (SecretKind::TicketKey, "f1"),
            (SecretKind::PairwiseSalt, ""),
        ] {
            let e = kek.open(kind, kid, &wrapped).unwrap_err();
            assert!(
                matches!(e, KekError::Tampered { .. }),
                "{kind:?} {kid}: {e}"
            );
        }
    }

    #[test]
    fn secrets_in_the_clear_are_told_from_envelopes() {
        let kek = ring(1);
        let der = crate::keys::generate().unwrap().private_der;
        assert_eq!(form(SecretKind::SigningKey, &der), Some(Form::Clear));
        assert_eq!(
            kek.open(SecretKind::SigningKey, "k", &der).unwrap(),
            der,
            "a legacy key is used as it is"
        );
        assert_eq!(
            kek.standing(SecretKind::SigningKey, "k", &der),
            Ok(Standing::Stale)
        );
        // Clear 32-byte secrets, even ones that begin like an envelope.
        let mut lookalike = [0u8; 32];
        lookalike[..5].copy_from_slice(b"baaK\x01");
        for clear in [[9u8; 32], lookalike] {
            for kind in [
                SecretKind::TicketKey,
                SecretKind::FederationKey,
                SecretKind::PairwiseSalt,
            ] {
                assert_eq!(form(kind, &clear), Some(Form::Clear));
                assert_eq!(kek.open(kind, "x", &clear).unwrap(), clear);
            }
        }
        // Neither: refused.
        for bad in [&b""[..], &[1, 2, 3], &[0u8; 31], &[0u8; 33]] {
            assert!(matches!(
                kek.open(SecretKind::TicketKey, "x", bad),
                Err(KekError::Malformed { .. })
            ));
        }
        assert!(form(SecretKind::SigningKey, &[0x31; 100]).is_none());
        // An envelope of an unknown version is no envelope.
        let mut v2 = kek.wrap(SecretKind::TicketKey, "x", &[1; 32]).unwrap();
        v2[4] = 2;
        assert!(form(SecretKind::TicketKey, &v2).is_none());
    }

    #[test]
    fn typed_keys_round_trip() {
        let kek = ring(3);
        let t = TicketKey {
            kid: "t".into(),
            key: [5; 32],
            created_ms: 1,
            retired_ms: Some(2),
            publish_until_ms: Some(3),
        };
        let w = kek.wrap_ticket_key(&t).unwrap();
        assert_ne!(w.key, t.key.to_vec());
        assert!(kek.open_ticket_key(&w).unwrap() == t);
        let salt = [8; 32];
        assert_eq!(kek.open_salt(&kek.wrap_salt(&salt).unwrap()).unwrap(), salt);
        let k = crate::keys::generate().unwrap();
        let w = kek.wrap_signing_key(k.clone()).unwrap();
        assert_eq!(kek.open_signing_key(&w).unwrap(), k.private_der);
    }

    #[test]
    fn keks_parse_from_hex_or_base64_and_errors_do_not_echo_them() {
        let bytes = [0xab; 32];
        let hex = hex::encode(bytes);
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        for text in [hex.clone(), format!("  {hex}\n"), b64, url] {
            assert_eq!(parse_kek(&text).unwrap(), bytes, "{text}");
        }
        for bad in [&hex[..62], "not a key at all", "", &"zz".repeat(32)] {
            let e = parse_kek(bad).unwrap_err().to_string();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
    }

    #[test]
    fn the_environment_wins_and_a_missing_kek_names_both_places() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kek");
        let id = write_new_kek_file(&file).unwrap();
        assert!(write_new_kek_file(&file).is_err(), "never replaced");
        let cfg = SecretsConfig {
            kek_file: Some(file.clone()),
            previous_kek_files: vec![],
        };
        let none = |_: &str| None;
        assert_eq!(KekRing::load(&cfg, none).unwrap().current_id(), id);
        let other = hex::encode([4; 32]);
        let env = |k: &str| (k == ENV_KEK).then(|| other.clone());
        let ring = KekRing::load(&cfg, env).unwrap();
        assert_eq!(ring.current_id(), hex::encode(kek_id(&[4; 32])));
        let e = KekRing::load(&SecretsConfig::default(), none)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[secrets] kek_file") && e.contains(ENV_KEK),
            "{e}"
        );
        // Previous KEKs from the environment, and never one twice.
        let prev = format!("{},{}", hex::encode([5; 32]), hex::encode([6; 32]));
        let env = |k: &str| match k {
            ENV_KEK => Some(other.clone()),
            ENV_PREVIOUS_KEKS => Some(prev.clone()),
            _ => None,
        };
        assert_eq!(KekRing::load(&cfg, env).unwrap().previous.len(), 2);
        assert!(KekRing::new(&[4; 32], &[[4; 32]]).is_err());
    }

    #[test]
    fn a_kek_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kek");
        write_new_kek_file(&file).unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, true), (0o644, false)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(read_kek_file(&file).is_ok(), ok, "mode {mode:o}");
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o620)).unwrap();
        let e = read_kek_file(&file).unwrap_err().to_string();
        assert!(e.contains("620") && e.contains("chmod 600"), "{e}");
    }
}
