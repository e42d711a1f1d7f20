//! Reads of the applied state for request handlers: one record or one key
//! family at a time, each under the tree's read lock, so a read never sees
//! a snapshot install half done.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use baa_proto::codec;
use baa_proto::model::User;
use baa_proto::sso::{
    AccessToken, DeviceGrant, Failures, LoginTicket, PairwiseSalt, RefreshToken, SecretHash,
    Session, SigningKey, Site, SiteOptions, ThrottleSubject, Trust,
};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::keyspace::{
    self, key, trust_key, user_by_id_key, user_key, user_sessions_prefix, user_trusts_prefix,
    KEY_APPLIED, KEY_CURRENT_FEDERATION_KID, KEY_CURRENT_KID, KEY_DEVICE_GRANTS, KEY_MEMBERSHIP,
    KEY_PAIRWISE_SALT, PREFIX_DEVICE, PREFIX_FAILURES, PREFIX_FEDERATION_KEY, PREFIX_KEY,
    PREFIX_PEER_AGENCY, PREFIX_REFRESH, PREFIX_SESSION, PREFIX_SESSION_BY_SID, PREFIX_SITE,
    PREFIX_SITE_OPTIONS, PREFIX_TICKET, PREFIX_TOKEN, PREFIX_USER, PREFIX_USER_CODE,
};
use super::{read_tree, SmShared};
use crate::raft::{sm_read_err, LogId, SnapshotMeta, StorageError};

/// The state's digest: SHA-256 over every record in key order, each as
/// its key's and its value's lengths and bytes, except the applied log id
/// and the membership. Those two say where the state stands and who holds
/// it, not what it holds: nodes at the same index differ in neither, and a
/// cluster restored from a backup has the same records under another
/// membership (new addresses), so its digest equals the backup's.
#[derive(Default)]
pub struct StateDigest(Sha256);

impl StateDigest {
    /// Adds one record, in key order (skips the two named above).
    pub fn add(&mut self, k: &[u8], v: &[u8]) {
        if k == KEY_APPLIED || k == KEY_MEMBERSHIP {
            return;
        }
        self.0.update((k.len() as u64).to_le_bytes());
        self.0.update(k);
        self.0.update((v.len() as u64).to_le_bytes());
        self.0.update(v);
    }

    /// The digest, in hex.
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// One page of a key family, in key order.
#[derive(Debug)]
pub struct KeyPage<T> {
    /// The records of the page.
    pub items: Vec<T>,
    /// The own key (the key after the family prefix) of the last item when
    /// more records follow: where the next page starts after.
    pub next_after: Option<Vec<u8>>,
}

/// Records stored under their names, listed a page at a time by
/// [`StateReader::named_page`].
pub trait Named: DeserializeOwned {
    /// The key family holding them (see `keyspace`).
    const FAMILY: &'static [u8];
}

/// Users, by username.
impl Named for User {
    const FAMILY: &'static [u8] = PREFIX_USER;
}

/// Partner sites, by client id.
impl Named for Site {
    const FAMILY: &'static [u8] = PREFIX_SITE;
}

/// How many times a digest is taken while entries keep being applied.
pub const DIGEST_TRIES: usize = 2;

/// Read access to the applied state, for request handlers.
#[derive(Clone)]
pub struct StateReader {
    shared: Arc<SmShared>,
}

impl StateReader {
    pub(super) fn new(shared: Arc<SmShared>) -> Self {
        Self { shared }
    }

    fn get<T: DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>, StorageError> {
        read_tree(&self.shared.tree(), k)
    }

    fn scan<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>, StorageError> {
        let tree = self.shared.tree();
        let mut out = Vec::new();
        for item in tree.scan_prefix(prefix) {
            let (_, v) = item.map_err(sm_read_err)?;
            out.push(codec::decode_record(&v).map_err(sm_read_err)?);
        }
        Ok(out)
    }

    /// The user named `username`, as applied on this node.
    pub fn user(&self, username: &str) -> Result<Option<User>, StorageError> {
        self.get(&user_key(username))
    }

    /// Up to `limit` records of a named family (users, sites) whose names
    /// start with `prefix`, in name order, from just after the name `after`.
    pub fn named_page<T: Named>(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyPage<T>, StorageError> {
        self.page(T::FAMILY, prefix, after, limit, |_, _, v| {
            codec::decode_record(v).map(Some).map_err(sm_read_err)
        })
    }

    /// Up to `limit` stored sessions of user `user_id` that `keep` accepts,
    /// in session-key order, from just after the session key `after`.
    pub fn sessions_page(
        &self,
        user_id: u64,
        after: Option<&[u8]>,
        limit: usize,
        keep: impl Fn(&Session) -> bool,
    ) -> Result<KeyPage<Session>, StorageError> {
        let index = user_sessions_prefix(user_id);
        self.page(&index, b"", after, limit, |tree, session_key, _| {
            let session: Option<Session> = read_tree(tree, &key(PREFIX_SESSION, session_key))?;
            Ok(session.filter(|s| keep(s)))
        })
    }

    /// One page of family `family`'s records whose own keys (the key after
    /// the family prefix) start with `prefix`: a range scan from just after
    /// the own key `after` (or from the first key with `prefix`, whichever
    /// comes later) that stops at the first record past `limit` that `read`
    /// accepts. It costs `limit` records plus those `read` passes over,
    /// whatever the family's size. `read` gets the tree, an own key and its
    /// value, and answers the item or `None` to pass over the record.
    fn page<T>(
        &self,
        family: &[u8],
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        mut read: impl FnMut(&sled::Tree, &[u8], &[u8]) -> Result<Option<T>, StorageError>,
    ) -> Result<KeyPage<T>, StorageError> {
        let first = key(family, prefix);
        let from = match after.map(|a| key(family, a)) {
            Some(k) if k >= first => Bound::Excluded(k),
            _ => Bound::Included(first.clone()),
        };
        let tree = self.shared.tree();
        let mut items = Vec::new();
        let mut last = None;
        for record in tree.range::<Vec<u8>, _>((from, Bound::Unbounded)) {
            let (k, v) = record.map_err(sm_read_err)?;
            if !k.starts_with(&first) {
                break;
            }
            let own = &k[family.len()..];
            let Some(item) = read(&tree, own, &v)? else {
                continue;
            };
            if items.len() == limit {
                return Ok(KeyPage {
                    items,
                    next_after: last,
                });
            }
            items.push(item);
            last = Some(own.to_vec());
        }
        Ok(KeyPage {
            items,
            next_after: None,
        })
    }

    /// Decodes every record as the type its key family holds (see
    /// `keyspace`) and counts them by family; the first record that does not
    /// read back is an error naming it.
    pub fn check_records(&self) -> Result<BTreeMap<&'static str, usize>, String> {
        let tree = self.shared.tree().clone();
        let mut counts = BTreeMap::new();
        for item in tree.iter() {
            let (k, v) = item.map_err(|e| e.to_string())?;
            *counts.entry(keyspace::decode(&k, &v)?).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// The applied log index and the state's digest (see [`StateDigest`]),
    /// taken together so that nodes at the same index can be compared;
    /// `None` when entries were applied during every try.
    ///
    /// The tree is read without holding apply up (a digest of a large state
    /// takes a while, and a status call must not stall writes for it).
    /// Apply writes the applied id with every batch, so a digest whose
    /// applied id reads the same before and after, in the same tree (an
    /// install replaces it), is the state at exactly that id; otherwise it
    /// is taken again, up to [`DIGEST_TRIES`] times.
    pub fn digest(&self) -> Result<Option<(Option<u64>, String)>, StorageError> {
        'tries: for _ in 0..DIGEST_TRIES {
            let before = self.applied()?;
            let tree = self.shared.tree().clone();
            let mut h = StateDigest::default();
            for item in tree.iter() {
                match item {
                    Ok((k, v)) => h.add(&k, &v),
                    // A snapshot install replaced the tree and dropped the
                    // one being read: the state moved on; take it again.
                    Err(_) if self.shared.tree().name() != tree.name() => continue 'tries,
                    Err(e) => return Err(sm_read_err(e)),
                }
            }
            if self.applied()? == before && self.shared.tree().name() == tree.name() {
                return Ok(Some((before.map(|l| l.index), h.finish())));
            }
        }
        Ok(None)
    }

    /// The id of the last entry applied, read from the live tree.
    fn applied(&self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get::<Option<LogId>>(KEY_APPLIED)?.flatten())
    }

    /// The current snapshot's meta and its data file, read as one pair:
    /// what a backup is written from.
    pub fn current_snapshot(&self) -> anyhow::Result<Option<(SnapshotMeta, std::fs::File)>> {
        self.shared.open_current_snapshot()
    }

    /// How many sessions the state holds (alive or not yet swept): a scan
    /// of their keys, without holding apply up.
    pub fn session_count(&self) -> Result<u64, StorageError> {
        let tree = self.shared.tree().clone();
        let mut n = 0;
        for item in tree.scan_prefix(PREFIX_SESSION) {
            // A tree an install dropped midway ends the count early.
            if item.is_err() {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    /// The session with key `key`, if stored (alive or not).
    pub fn session(&self, k: &SecretHash) -> Result<Option<Session>, StorageError> {
        self.get(&key(PREFIX_SESSION, k))
    }

    /// The options of site `client_id` (the defaults when it has none).
    pub fn site_options(&self, client_id: &str) -> Result<SiteOptions, StorageError> {
        Ok(self
            .get(&key(PREFIX_SITE_OPTIONS, client_id.as_bytes()))?
            .unwrap_or_default())
    }

    /// Whether `id` (a sealed access token's, its ticket's or its refresh
    /// family's) is on the revoked list.
    pub fn access_revoked(&self, id: &[u8]) -> Result<bool, StorageError> {
        Ok(self
            .get::<u64>(&key(super::keyspace::PREFIX_REVOKED_ACCESS, id))?
            .is_some())
    }

    /// The algorithm of site `client_id`'s ID tokens (RS256 when it chose none).
    pub fn id_token_alg(
        &self,
        client_id: &str,
    ) -> Result<baa_proto::sso::IdTokenAlg, StorageError> {
        Ok(self
            .get(&key(super::keyspace::PREFIX_SITE_ALG, client_id.as_bytes()))?
            .unwrap_or_default())
    }

    /// The salt of pairwise identifiers as stored, once set: its envelope,
    /// or (set by an earlier release and not rewrapped yet) the clear salt.
    pub fn pairwise_salt(&self) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(wrapped) = self.get::<Vec<u8>>(keyspace::KEY_WRAPPED_PAIRWISE_SALT)? {
            return Ok(Some(wrapped));
        }
        Ok(self
            .get::<PairwiseSalt>(KEY_PAIRWISE_SALT)?
            .map(|s| s.to_vec()))
    }

    /// The session whose public handle is `sid`, if stored (alive or not).
    pub fn session_by_sid(&self, sid: &str) -> Result<Option<Session>, StorageError> {
        match self.get::<SecretHash>(&key(PREFIX_SESSION_BY_SID, sid.as_bytes()))? {
            Some(k) => self.session(&k),
            None => Ok(None),
        }
    }

    /// The user with id `id`.
    pub fn user_by_id(&self, id: u64) -> Result<Option<User>, StorageError> {
        match self.get::<String>(&user_by_id_key(id))? {
            Some(name) => self.user(&name),
            None => Ok(None),
        }
    }

    /// The partner site `client_id`.
    pub fn site(&self, client_id: &str) -> Result<Option<Site>, StorageError> {
        self.get(&key(PREFIX_SITE, client_id.as_bytes()))
    }

    /// The user's trust relationship with a site.
    pub fn trust(&self, user_id: u64, client_id: &str) -> Result<Option<Trust>, StorageError> {
        self.get(&trust_key(user_id, client_id))
    }

    /// Every trust relationship of a user.
    pub fn trusts(&self, user_id: u64) -> Result<Vec<Trust>, StorageError> {
        self.scan(&user_trusts_prefix(user_id))
    }

    /// The access token with hash `hash`.
    pub fn access_token(&self, hash: &SecretHash) -> Result<Option<AccessToken>, StorageError> {
        self.get(&key(PREFIX_TOKEN, hash))
    }

    /// The refresh token with hash `hash`.
    pub fn refresh_token(&self, hash: &SecretHash) -> Result<Option<RefreshToken>, StorageError> {
        self.get(&key(PREFIX_REFRESH, hash))
    }

    /// The device authorization a user code names.
    pub fn device_by_user_code(&self, code: &str) -> Result<Option<DeviceGrant>, StorageError> {
        match self.get::<SecretHash>(&key(PREFIX_USER_CODE, code.as_bytes()))? {
            Some(h) => self.get(&key(PREFIX_DEVICE, &h)),
            None => Ok(None),
        }
    }

    /// The device grant whose device code hashes to `hash`.
    pub fn device(&self, hash: &SecretHash) -> Result<Option<DeviceGrant>, StorageError> {
        self.get(&key(PREFIX_DEVICE, hash))
    }

    /// How many device grants are stored (see `MAX_DEVICE_GRANTS`).
    pub fn device_grants(&self) -> Result<u64, StorageError> {
        Ok(self.get(KEY_DEVICE_GRANTS)?.unwrap_or(0))
    }

    /// The login ticket with hash `hash`.
    pub fn ticket(&self, hash: &SecretHash) -> Result<Option<LoginTicket>, StorageError> {
        self.get(&key(PREFIX_TICKET, hash))
    }

    /// Throttle state of a subject.
    pub fn failures(&self, subject: &ThrottleSubject) -> Result<Failures, StorageError> {
        Ok(self
            .get(&key(PREFIX_FAILURES, &subject.key()))?
            .unwrap_or_default())
    }

    /// Every signing key as stored (its private key wrapped, or in the
    /// clear as an earlier release stored it), and the current key id.
    pub fn signing_keys(&self) -> Result<(Vec<SigningKey>, Option<String>), StorageError> {
        Ok((self.scan(PREFIX_KEY)?, self.get(KEY_CURRENT_KID)?))
    }

    /// Every peer agency, by issuer.
    pub fn peer_agencies(&self) -> Result<Vec<baa_proto::federation::PeerAgency>, StorageError> {
        self.scan(PREFIX_PEER_AGENCY)
    }

    /// The first `limit` back-channel deliveries of the outbox, oldest first.
    pub fn outbox(&self, limit: usize) -> Result<Vec<baa_proto::sso::OutboxItem>, StorageError> {
        let tree = self.shared.tree();
        let mut out = Vec::new();
        for item in tree.scan_prefix(keyspace::PREFIX_OUTBOX).take(limit) {
            let (_, v) = item.map_err(sm_read_err)?;
            out.push(codec::decode_record(&v).map_err(sm_read_err)?);
        }
        Ok(out)
    }

    /// The peer agency `issuer`.
    pub fn peer_agency(
        &self,
        issuer: &str,
    ) -> Result<Option<baa_proto::federation::PeerAgency>, StorageError> {
        self.get(&key(PREFIX_PEER_AGENCY, issuer.as_bytes()))
    }

    /// The peer agency registered here as client `client_id`, if it is one.
    pub fn peer_of_client(
        &self,
        client_id: &str,
    ) -> Result<Option<baa_proto::federation::PeerAgency>, StorageError> {
        if !client_id.starts_with("fed.") {
            return Ok(None);
        }
        Ok(self
            .peer_agencies()?
            .into_iter()
            .find(|p| baa_proto::federation::peer_client_id(&p.issuer) == client_id))
    }

    /// The peer session session `k` was derived from, if any.
    pub fn session_peer(
        &self,
        k: &SecretHash,
    ) -> Result<Option<baa_proto::federation::PeerSessionLink>, StorageError> {
        self.get(&key(keyspace::PREFIX_SESSION_PEER, k))
    }

    /// The keys of the local sessions derived from session `peer_sid` of `peer`.
    pub fn sessions_of_peer_session(
        &self,
        peer: &str,
        peer_sid: &str,
    ) -> Result<Vec<SecretHash>, StorageError> {
        let prefix = keyspace::peer_sessions_prefix(peer, peer_sid);
        let tree = self.shared.tree();
        let mut out = Vec::new();
        for item in tree.scan_prefix(&prefix) {
            let (k, _) = item.map_err(sm_read_err)?;
            if let Ok(h) = SecretHash::try_from(&k[prefix.len()..]) {
                out.push(h);
            }
        }
        Ok(out)
    }

    /// Every ticket key as stored (wrapped; those an earlier release
    /// stored, with their clear bytes until rewrapped), and the current
    /// key id.
    pub fn ticket_keys(
        &self,
    ) -> Result<(Vec<baa_proto::sso::WrappedTicketKey>, Option<String>), StorageError> {
        let mut keys: Vec<baa_proto::sso::WrappedTicketKey> =
            self.scan(keyspace::PREFIX_WRAPPED_TICKET_KEY)?;
        for k in self.scan::<baa_proto::sso::TicketKey>(keyspace::PREFIX_TICKET_KEY)? {
            let clear = k.key.to_vec();
            keys.push(k.stored_as(clear));
        }
        Ok((keys, self.get(keyspace::KEY_CURRENT_TICKET_KID)?))
    }

    /// Whether the sealed ticket `id` has been redeemed (and is still
    /// remembered), by either marker: a scan of the time-keyed ones, for
    /// tests.
    #[cfg(test)]
    pub fn ticket_spent(&self, id: &[u8; 16]) -> Result<bool, StorageError> {
        let keyed = self
            .get::<baa_proto::sso::SpentTicket>(&key(keyspace::PREFIX_SPENT, id))?
            .is_some();
        let tree = self.shared.tree();
        let mut once = false;
        for item in tree.scan_prefix(keyspace::PREFIX_SPENT_ONCE) {
            let (k, _) = item.map_err(sm_read_err)?;
            once |= k.ends_with(id);
        }
        Ok(keyed || once)
    }

    /// Every federation key as stored (wrapped; those an earlier release
    /// stored, with their clear seeds until rewrapped), and the current
    /// key id.
    pub fn federation_keys(
        &self,
    ) -> Result<
        (
            Vec<baa_proto::federation::WrappedFederationKey>,
            Option<String>,
        ),
        StorageError,
    > {
        let mut keys: Vec<baa_proto::federation::WrappedFederationKey> =
            self.scan(keyspace::PREFIX_WRAPPED_FEDERATION_KEY)?;
        for k in self.scan::<baa_proto::federation::FederationKey>(PREFIX_FEDERATION_KEY)? {
            let clear = k.seed.to_vec();
            keys.push(k.stored_as(clear));
        }
        Ok((keys, self.get(KEY_CURRENT_FEDERATION_KID)?))
    }
}
