//! Device authorizations (RFC 8628): started by an app, decided by the user
//! in a browser session, polled by the app until it gets its tokens.

use baa_proto::command::{CommandResult, Outcome};
use baa_proto::sso::{
    AccessToken, DeviceGrant, DevicePoll, DeviceStatus, RefreshToken, SecretHash,
};
use baa_proto::ErrorCode;

use super::super::keyspace::{key, KEY_DEVICE_GRANTS, PREFIX_DEVICE, PREFIX_USER_CODE};
use super::super::staged::{invalid, refuse, Staged};
use super::tokens;
use crate::raft::StorageError;

/// Device grants stored at once, at most: an anonymous client may start
/// them, so they are capped cluster-wide (each expires in minutes).
pub const MAX_DEVICE_GRANTS: u64 = 10_000;

/// Stores a new device authorization, unless the cap of pending ones is
/// reached; its times are the command's.
pub(super) fn start(
    st: &mut Staged<'_>,
    now: u64,
    d: &DeviceGrant,
) -> Result<CommandResult, StorageError> {
    let k = key(PREFIX_DEVICE, &d.device_hash);
    let uk = key(PREFIX_USER_CODE, d.user_code.as_bytes());
    if st.get::<DeviceGrant>(&k)?.is_some() || st.get::<SecretHash>(&uk)?.is_some() {
        return Ok(Err(invalid("device or user code collision")));
    }
    let grants = st.get::<u64>(KEY_DEVICE_GRANTS)?.unwrap_or(0);
    if grants >= MAX_DEVICE_GRANTS {
        return refuse(
            ErrorCode::TemporarilyUnavailable,
            "too many device authorizations are pending; retry later",
        );
    }
    st.put(KEY_DEVICE_GRANTS, &(grants + 1))?;
    let lifetime = d.expires_ms.saturating_sub(d.issued_ms);
    let mut d = d.clone();
    d.issued_ms = now;
    d.expires_ms = now.saturating_add(lifetime);
    d.last_poll_ms = 0;
    d.status = DeviceStatus::Pending;
    st.put(&k, &d)?;
    st.put(&uk, &d.device_hash)?;
    Ok(Ok(Outcome::Done))
}

/// The user approves or declines the authorization its user code names.
pub(super) fn decide(
    st: &mut Staged<'_>,
    now: u64,
    user_code: &str,
    session_key: &SecretHash,
    approve: bool,
) -> Result<CommandResult, StorageError> {
    let Some(hash) = st.get::<SecretHash>(&key(PREFIX_USER_CODE, user_code.as_bytes()))? else {
        return refuse(ErrorCode::InvalidGrant, "no such code");
    };
    let dk = key(PREFIX_DEVICE, &hash);
    let Some(mut d) = st.get::<DeviceGrant>(&dk)? else {
        return refuse(ErrorCode::InvalidGrant, "no such code");
    };
    if now >= d.expires_ms {
        return refuse(ErrorCode::ExpiredToken, "the code has expired");
    }
    if d.status != DeviceStatus::Pending {
        return refuse(ErrorCode::InvalidGrant, "the code was already used");
    }
    if tokens::live_session(st, now, session_key)?.is_none() {
        return refuse(ErrorCode::SessionNotFound, "the session has ended");
    }
    d.status = if approve {
        DeviceStatus::Approved {
            session_key: *session_key,
        }
    } else {
        DeviceStatus::Denied
    };
    st.put(&dk, &d)?;
    Ok(Ok(Outcome::DeviceDecided(d.client_id)))
}

/// The app polls; on approval its tokens are stored, once.
pub(super) fn poll(
    st: &mut Staged<'_>,
    now: u64,
    device_hash: &SecretHash,
    client_id: &str,
    token: &AccessToken,
    refresh: Option<&RefreshToken>,
) -> Result<CommandResult, StorageError> {
    let dk = key(PREFIX_DEVICE, device_hash);
    let Some(mut d) = st.get::<DeviceGrant>(&dk)? else {
        return refuse(ErrorCode::InvalidGrant, "the device code is unknown");
    };
    if d.client_id != client_id {
        return refuse(
            ErrorCode::InvalidGrant,
            "the device code belongs to another client",
        );
    }
    if now >= d.expires_ms {
        return refuse(ErrorCode::ExpiredToken, "the device code has expired");
    }
    let too_soon = d.last_poll_ms > 0 && now < d.last_poll_ms + d.interval_s * 1000;
    d.last_poll_ms = now;
    if too_soon {
        // RFC 8628 §3.5: every slow_down adds 5 seconds to the interval.
        d.interval_s += 5;
        st.put(&dk, &d)?;
        return Ok(Ok(Outcome::DevicePending(DevicePoll::SlowDown(
            d.interval_s,
        ))));
    }
    match d.status.clone() {
        DeviceStatus::Pending => {
            st.put(&dk, &d)?;
            Ok(Ok(Outcome::DevicePending(DevicePoll::Pending)))
        }
        DeviceStatus::Denied => refuse(ErrorCode::AccessDenied, "the user declined"),
        DeviceStatus::Done => refuse(ErrorCode::InvalidGrant, "the device code was already used"),
        DeviceStatus::Approved { session_key } => {
            let Some(session) = tokens::live_session(st, now, &session_key)? else {
                return refuse(ErrorCode::InvalidGrant, "the approving session has ended");
            };
            d.status = DeviceStatus::Done;
            st.put(&dk, &d)?;
            let scopes = d.scopes.clone();
            tokens::grant(
                st,
                now,
                &session,
                client_id,
                &scopes,
                None,
                tokens::Access::Stored(token),
                refresh,
            )
        }
    }
}
