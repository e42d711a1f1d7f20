//! Peer agencies of the federation: added (once the node that took the
//! request checked the peer's configuration against its pin) and removed;
//! a peer is registered as a client of this agency by the peering itself.
//! Sign-ins with a peer's word: the peer's subject linked to a local
//! account, and a session linked to the peer's.

use baa_proto::command::{CommandResult, NewUser, Outcome};
use baa_proto::federation::{
    federated_username, peer_client_id, FederatedSignIn, PeerAgency, PeerSessionLink,
    BACKCHANNEL_LOGOUT_PATH, CALLBACK_PATH,
};
use baa_proto::model::User;
use baa_proto::sso::{ResponseMode, Site, SiteOptions};
use baa_proto::ErrorCode;

use super::super::keyspace::{key, subject_link_key, PREFIX_PEER_AGENCY, PREFIX_SESSION};
use super::super::staged::{invalid, refuse, Staged};
use super::{sessions, sites, users};
use crate::raft::StorageError;

/// The client registration a peer gets by the peering: its callback, its
/// back-channel logout, the OIDC scopes; no secret (it signs assertions
/// with its federation key instead).
fn peer_site(issuer: &str) -> Site {
    Site {
        client_id: peer_client_id(issuer),
        name: issuer.to_string(),
        redirect_uris: vec![format!("{issuer}{CALLBACK_PATH}")],
        post_logout_redirect_uris: Vec::new(),
        secret_hash: None,
        backchannel_logout_uri: Some(format!("{issuer}{BACKCHANNEL_LOGOUT_PATH}")),
        allowed_scopes: vec!["openid".into(), "profile".into(), "email".into()],
        created_ms: 0,
    }
}

/// Adds a peer agency, stamped with the command's time.
pub(super) fn add(
    st: &mut Staged<'_>,
    now: u64,
    peer: &PeerAgency,
) -> Result<CommandResult, StorageError> {
    let k = key(PREFIX_PEER_AGENCY, peer.issuer.as_bytes());
    if st.get::<PeerAgency>(&k)?.is_some() {
        return refuse(
            ErrorCode::PeerExists,
            format!(
                "{} is a peer already; remove it first to change its pin",
                peer.issuer
            ),
        );
    }
    let options = SiteOptions {
        default_response_mode: ResponseMode::FormPost,
    };
    if let Err(e) = sites::register(
        st,
        now,
        &peer_site(&peer.issuer),
        options,
        Default::default(),
    )? {
        return Ok(Err(e));
    }
    let mut p = peer.clone();
    p.added_ms = now;
    st.put(&k, &p)?;
    Ok(Ok(Outcome::Done))
}

/// Removes a peer agency.
pub(super) fn remove(st: &mut Staged<'_>, issuer: &str) -> Result<CommandResult, StorageError> {
    let k = key(PREFIX_PEER_AGENCY, issuer.as_bytes());
    if st.get::<PeerAgency>(&k)?.is_none() {
        return refuse(ErrorCode::PeerNotFound, format!("{issuer} is not a peer"));
    }
    st.remove(&k);
    // Its registration goes with it (with the sessions' tokens it holds).
    let _ = sites::remove(st, &peer_client_id(issuer))?;
    Ok(Ok(Outcome::Done))
}

/// Pins peer `issuer` to the key `pin` (a rotation this agency followed).
pub(super) fn repin(
    st: &mut Staged<'_>,
    issuer: &str,
    pin: &str,
) -> Result<CommandResult, StorageError> {
    let k = key(PREFIX_PEER_AGENCY, issuer.as_bytes());
    if let Some(mut p) = st.get::<PeerAgency>(&k)? {
        p.pin = pin.to_string();
        st.put(&k, &p)?;
    }
    Ok(Ok(Outcome::Done))
}

/// Signs in with a peer's word (see [`FederatedSignIn`]).
pub(super) fn sign_in(
    st: &mut Staged<'_>,
    now: u64,
    f: &FederatedSignIn,
) -> Result<CommandResult, StorageError> {
    if st
        .get::<PeerAgency>(&key(PREFIX_PEER_AGENCY, f.peer.as_bytes()))?
        .is_none()
    {
        return refuse(ErrorCode::PeerNotFound, format!("{} is not a peer", f.peer));
    }
    let lk = subject_link_key(&f.peer, &f.sub);
    let linked = match st.get::<u64>(&lk)? {
        Some(id) => users::by_id(st, id)?,
        None => None,
    };
    let user = match linked {
        Some(u) => u,
        None if f.create => match new_account(st, now, f)? {
            Ok(u) => u,
            Err(e) => return Ok(Err(e)),
        },
        // Only an account an administrator made for this user, under the
        // name a first use would make: the link is then recorded.
        None => match prepared_account(st, f)? {
            Some(u) => {
                st.put(&lk, &u.id)?;
                let peer = f.peer.clone();
                let _ = users::update_user(st, now, &u.username, move |u| {
                    u.attributes.insert("federated_from".into(), peer);
                    Ok(())
                })?;
                u
            }
            None => {
                return refuse(
                    ErrorCode::AccountNotLinked,
                    "no account here is linked to this user of the peer agency",
                )
            }
        },
    };
    if user.disabled {
        return refuse(ErrorCode::Unauthorized, "the account is disabled");
    }
    if st
        .get::<baa_proto::sso::Session>(&key(PREFIX_SESSION, &f.session.key))?
        .is_some()
    {
        return Ok(Err(invalid("session key collision")));
    }
    let lifetime = f
        .session
        .absolute_expiry_ms
        .saturating_sub(f.session.created_ms);
    let mut s = f.session.clone();
    s.user_id = user.id;
    s.username = user.username;
    s.created_ms = now;
    s.last_seen_ms = now;
    s.absolute_expiry_ms = now.saturating_add(lifetime);
    s.sites.clear();
    sessions::put_records(st, &s)?;
    let link = PeerSessionLink {
        peer: f.peer.clone(),
        peer_sid: f.peer_sid.clone(),
    };
    sessions::link_to_peer(st, &s.key, &link)?;
    Ok(Ok(Outcome::Session(Box::new(s))))
}

/// The account an administrator made for a peer's user under the name a
/// first use would give it ([`federated_username`], first attempt), if it
/// exists and is not linked to another subject of that peer already.
fn prepared_account(st: &Staged<'_>, f: &FederatedSignIn) -> Result<Option<User>, StorageError> {
    let name = federated_username(&f.username_hint, &f.peer, &f.sub, 0);
    let Some(u) = users::by_name(st, &name)? else {
        return Ok(None);
    };
    let claimed = u
        .attributes
        .get("federated_from")
        .is_some_and(|p| p == &f.peer);
    Ok((!claimed).then_some(u))
}

/// Makes the local account of a peer's subject and links it: the first free
/// name of [`federated_username`]'s attempts, no password.
fn new_account(
    st: &mut Staged<'_>,
    now: u64,
    f: &FederatedSignIn,
) -> Result<Result<User, baa_proto::command::ApplyError>, StorageError> {
    for attempt in 0..4 {
        let username = federated_username(&f.username_hint, &f.peer, &f.sub, attempt);
        if users::by_name(st, &username)?.is_some() {
            continue;
        }
        let display_name = match f.display_name.trim() {
            "" => username.clone(),
            d => d.chars().take(128).collect(),
        };
        let new = NewUser {
            username,
            display_name,
            email: f.email.clone().filter(|e| e.len() <= 254),
            groups: Vec::new(),
            attributes: [("federated_from".to_string(), f.peer.clone())].into(),
            password_hash: None,
        };
        return match users::create(st, now, &new)? {
            Ok(Outcome::User(u)) => {
                st.put(&subject_link_key(&f.peer, &f.sub), &u.id)?;
                Ok(Ok(u))
            }
            Ok(_) => Ok(Err(invalid("unexpected outcome"))),
            Err(e) => Ok(Err(e)),
        };
    }
    Ok(Err(invalid("no free username for the peer's user")))
}
