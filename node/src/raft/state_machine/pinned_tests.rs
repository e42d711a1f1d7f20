//! Pins the variant order of every enum that reaches the disk: the Raft log
//! (entries and their commands), the state machine's records and snapshots
//! (sessions, sites, trusts, device grants, …) and the remembered results of
//! requests (outcomes and error codes).
//!
//! bincode stores an enum as the index of its variant followed by the
//! variant's fields, so the index is the on-disk format: a variant inserted
//! in the middle or a reordering silently turns every stored value after it
//! into another variant, on every node, and old data directories and logs
//! written by a previous release no longer read back as they were written.
//! These enums are therefore append-only: a new variant goes at the end,
//! none is removed or moved. Each test lists `(variant, index)` as stored
//! and checks that one value of every variant encodes with that index and
//! that no variant exists past the last one listed; each names every variant
//! in an exhaustive `match`, so adding one does not compile until it is
//! listed here too.

use std::collections::{BTreeMap, BTreeSet};

use baa_proto::codec;
use baa_proto::command::{
    ApplyError, CommandResult, Consistency, NewUser, Op, Outcome, Proposal, UserPatch,
};
use baa_proto::model::{BaaNode, User};
use baa_proto::sso::{
    AccessToken, AccountName, DeviceGrant, DevicePoll, DeviceStatus, Grant, LoginParams,
    LoginTicket, RefreshToken, ResponseMode, RevokedSession, Rewrap, SecretKind, Session,
    SigningKey, Site, SiteOptions, ThrottlePolicy, ThrottleRule, ThrottleSubject, Trust,
};
use baa_proto::ErrorCode;
use openraft::EntryPayload;
use serde::{de::DeserializeOwned, Serialize};

use crate::raft::TypeConfig;

/// Checks one enum: `table` lists every variant with its stored index, in
/// order; `samples` hold one value of each variant; `name` names a value's
/// variant.
fn pin<T: Serialize + DeserializeOwned>(
    what: &str,
    table: &[(&str, u32)],
    samples: &[T],
    name: impl Fn(&T) -> &'static str,
) {
    for (row, (variant, index)) in table.iter().enumerate() {
        assert_eq!(
            *index as usize, row,
            "{what}::{variant}: the table must list the variants in their order"
        );
    }
    let mut seen = BTreeSet::new();
    for sample in samples {
        let variant = name(sample);
        let Some(&(_, index)) = table.iter().find(|(v, _)| *v == variant) else {
            panic!("{what}::{variant} is missing from the table");
        };
        let bytes = codec::encode_record(sample).unwrap();
        // The index is written as the codec writes a u32 (fixed or varint).
        let prefix = codec::encode_record(&index).unwrap();
        assert!(
            bytes.starts_with(&prefix),
            "{what}::{variant} is stored as {:?}…, not as variant {index} ({prefix:?}): \
             a variant was inserted or moved",
            &bytes[..bytes.len().min(prefix.len() + 4)]
        );
        assert!(seen.insert(variant), "{what}::{variant} has two samples");
    }
    let listed: BTreeSet<&str> = table.iter().map(|(v, _)| *v).collect();
    assert_eq!(seen, listed, "{what}: every listed variant needs a sample");
    // The index after the last row must be refused as an unknown variant
    // (not read as one, nor fail for want of its fields): no variant was
    // appended without being listed.
    let past = table.len() as u32;
    let err = match codec::decode_record::<T>(&codec::encode_record(&past).unwrap()) {
        Ok(_) => panic!("{what} has a variant with index {past} that the table does not list"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!("invalid value: integer `{past}`")),
        "{what} has more than {past} variants (decoding index {past}: {err})"
    );
}

fn user() -> User {
    User {
        id: 1,
        username: "alice".into(),
        display_name: "Alice".into(),
        email: None,
        groups: vec![],
        attributes: BTreeMap::new(),
        password_hash: None,
        disabled: false,
        created_ms: 0,
        updated_ms: 0,
        revision: 1,
    }
}

fn session() -> Session {
    Session {
        key: [1; 32],
        sid: "sid".into(),
        user_id: 1,
        username: "alice".into(),
        agency: "agency".into(),
        created_ms: 0,
        last_seen_ms: 0,
        idle_timeout_ms: 0,
        absolute_expiry_ms: 0,
        auth_time_ms: 0,
        methods: vec![],
        sites: vec![],
    }
}

fn site() -> Site {
    Site {
        client_id: "shop".into(),
        name: "Shop".into(),
        redirect_uris: vec![],
        post_logout_redirect_uris: vec![],
        secret_hash: None,
        backchannel_logout_uri: None,
        allowed_scopes: vec![],
        created_ms: 0,
    }
}

fn trust() -> Trust {
    Trust {
        user_id: 1,
        client_id: "shop".into(),
        scopes: vec![],
        params: LoginParams::default(),
        created_ms: 0,
        updated_ms: 0,
    }
}

fn ticket() -> LoginTicket {
    LoginTicket {
        hash: [2; 32],
        session_key: [1; 32],
        client_id: "shop".into(),
        redirect_uri: "https://shop.example/cb".into(),
        nonce: None,
        code_challenge: None,
        scopes: vec![],
        issued_ms: 0,
        expires_ms: 0,
        used: false,
        tokens: vec![],
    }
}

fn access_token() -> Box<AccessToken> {
    Box::new(AccessToken {
        hash: [3; 32],
        session_key: [1; 32],
        sid: "sid".into(),
        user_id: 1,
        client_id: "shop".into(),
        scopes: vec![],
        issued_ms: 0,
        expires_ms: 0,
    })
}

fn refresh_token() -> Box<RefreshToken> {
    Box::new(RefreshToken {
        hash: [4; 32],
        family: [4; 32],
        session_key: [1; 32],
        client_id: "shop".into(),
        scopes: vec![],
        issued_ms: 0,
        expires_ms: 0,
        used: false,
    })
}

fn device(status: DeviceStatus) -> DeviceGrant {
    DeviceGrant {
        device_hash: [5; 32],
        user_code: "BCDFGHJK".into(),
        client_id: "cli".into(),
        scopes: vec![],
        issued_ms: 0,
        expires_ms: 0,
        interval_s: 5,
        last_poll_ms: 0,
        status,
    }
}

fn revoked() -> RevokedSession {
    RevokedSession {
        sid: "sid".into(),
        user_id: 1,
        sites: vec![],
        tokens_revoked: 0,
    }
}

#[test]
fn op_variants_keep_their_order() {
    fn name(op: &Op) -> &'static str {
        match op {
            Op::CreateUser(_) => "CreateUser",
            Op::UpdateUser { .. } => "UpdateUser",
            Op::SetUserDisabled { .. } => "SetUserDisabled",
            Op::PurgeRequestResults { .. } => "PurgeRequestResults",
            Op::CreateSession { .. } => "CreateSession",
            Op::TouchSession { .. } => "TouchSession",
            Op::RevokeSession { .. } => "RevokeSession",
            Op::AddSite(_) => "AddSite",
            Op::RemoveSite { .. } => "RemoveSite",
            Op::SetTrust(_) => "SetTrust",
            Op::RevokeTrust { .. } => "RevokeTrust",
            Op::IssueTicket(_) => "IssueTicket",
            Op::RedeemTicket { .. } => "RedeemTicket",
            Op::Refresh { .. } => "Refresh",
            Op::StartDevice(_) => "StartDevice",
            Op::DecideDevice { .. } => "DecideDevice",
            Op::PollDevice { .. } => "PollDevice",
            Op::RevokeToken { .. } => "RevokeToken",
            Op::RecordSignInFailure { .. } => "RecordSignInFailure",
            Op::AddSigningKey { .. } => "AddSigningKey",
            Op::PurgeExpired => "PurgeExpired",
            Op::RevokeUserSessions { .. } => "RevokeUserSessions",
            Op::SetPairwiseSalt { .. } => "SetPairwiseSalt",
            Op::RegisterSite { .. } => "RegisterSite",
            Op::RecordFailedSignIn { .. } => "RecordFailedSignIn",
            Op::Sweep { .. } => "Sweep",
            Op::AddFederationKey { .. } => "AddFederationKey",
            Op::AddPeerAgency(_) => "AddPeerAgency",
            Op::RemovePeerAgency { .. } => "RemovePeerAgency",
            Op::FederatedSignIn(_) => "FederatedSignIn",
            Op::CompleteDeliveries { .. } => "CompleteDeliveries",
            Op::RepinPeer { .. } => "RepinPeer",
            Op::AddTicketKey { .. } => "AddTicketKey",
            Op::RedeemSealedTicket { .. } => "RedeemSealedTicket",
            Op::RegisterSiteWithAlg { .. } => "RegisterSiteWithAlg",
            Op::RedeemForSealedAccess { .. } => "RedeemForSealedAccess",
            Op::RevokeSealedAccess { .. } => "RevokeSealedAccess",
            Op::RedeemSealedOnce { .. } => "RedeemSealedOnce",
            Op::AddWrappedTicketKey { .. } => "AddWrappedTicketKey",
            Op::AddWrappedFederationKey { .. } => "AddWrappedFederationKey",
            Op::SetWrappedPairwiseSalt { .. } => "SetWrappedPairwiseSalt",
            Op::RewrapSecrets { .. } => "RewrapSecrets",
            Op::ReplaceSession { .. } => "ReplaceSession",
        }
    }
    let table = [
        ("CreateUser", 0),
        ("UpdateUser", 1),
        ("SetUserDisabled", 2),
        ("PurgeRequestResults", 3),
        ("CreateSession", 4),
        ("TouchSession", 5),
        ("RevokeSession", 6),
        ("AddSite", 7),
        ("RemoveSite", 8),
        ("SetTrust", 9),
        ("RevokeTrust", 10),
        ("IssueTicket", 11),
        ("RedeemTicket", 12),
        ("Refresh", 13),
        ("StartDevice", 14),
        ("DecideDevice", 15),
        ("PollDevice", 16),
        ("RevokeToken", 17),
        ("RecordSignInFailure", 18),
        ("AddSigningKey", 19),
        ("PurgeExpired", 20),
        ("RevokeUserSessions", 21),
        ("SetPairwiseSalt", 22),
        ("RegisterSite", 23),
        ("RecordFailedSignIn", 24),
        ("Sweep", 25),
        ("AddFederationKey", 26),
        ("AddPeerAgency", 27),
        ("RemovePeerAgency", 28),
        ("FederatedSignIn", 29),
        ("CompleteDeliveries", 30),
        ("RepinPeer", 31),
        ("AddTicketKey", 32),
        ("RedeemSealedTicket", 33),
        ("RegisterSiteWithAlg", 34),
        ("RedeemForSealedAccess", 35),
        ("RevokeSealedAccess", 36),
        ("RedeemSealedOnce", 37),
        ("AddWrappedTicketKey", 38),
        ("AddWrappedFederationKey", 39),
        ("SetWrappedPairwiseSalt", 40),
        ("RewrapSecrets", 41),
        ("ReplaceSession", 42),
    ];
    let rule = ThrottleRule {
        window_ms: 1,
        max_account_failures: 1,
        max_source_failures: 1,
        lockout_ms: 1,
    };
    let policy = ThrottlePolicy {
        window_ms: 1,
        max_pair_failures: 1,
        max_account_failures: 1,
        max_source_failures: 1,
        lockout_ms: 1,
    };
    let samples = [
        Op::CreateUser(NewUser {
            username: "alice".into(),
            display_name: "Alice".into(),
            email: None,
            groups: vec![],
            attributes: BTreeMap::new(),
            password_hash: None,
        }),
        Op::UpdateUser {
            username: "alice".into(),
            patch: UserPatch::default(),
        },
        Op::SetUserDisabled {
            username: "alice".into(),
            disabled: true,
        },
        Op::PurgeRequestResults { before_ms: 1 },
        Op::CreateSession {
            session: Box::new(session()),
            account: [6; 32],
            source: "10.0.0.1".into(),
        },
        Op::TouchSession { key: [1; 32] },
        Op::RevokeSession { key: [1; 32] },
        Op::AddSite(Box::new(site())),
        Op::RemoveSite {
            client_id: "shop".into(),
        },
        Op::SetTrust(Box::new(trust())),
        Op::RevokeTrust {
            user_id: 1,
            client_id: "shop".into(),
        },
        Op::IssueTicket(Box::new(ticket())),
        Op::RedeemTicket {
            hash: [2; 32],
            client_id: "shop".into(),
            redirect_uri: "https://shop.example/cb".into(),
            verifier_challenge: None,
            token: access_token(),
            refresh: None,
        },
        Op::Refresh {
            hash: [4; 32],
            client_id: "shop".into(),
            token: access_token(),
            refresh: refresh_token(),
        },
        Op::StartDevice(Box::new(device(DeviceStatus::Pending))),
        Op::DecideDevice {
            user_code: "BCDFGHJK".into(),
            session_key: [1; 32],
            approve: true,
        },
        Op::PollDevice {
            device_hash: [5; 32],
            client_id: "cli".into(),
            token: access_token(),
            refresh: Some(refresh_token()),
        },
        Op::RevokeToken { hash: [3; 32] },
        Op::RecordSignInFailure {
            account: [6; 32],
            source: "10.0.0.1".into(),
            rule,
        },
        Op::AddSigningKey {
            key: Box::new(SigningKey {
                kid: "k1".into(),
                private_der: vec![],
                n: vec![],
                e: vec![],
                created_ms: 0,
                retired_ms: None,
                publish_until_ms: None,
            }),
            publish_old_for_ms: 1,
        },
        Op::PurgeExpired,
        Op::RevokeUserSessions {
            username: "alice".into(),
        },
        Op::SetPairwiseSalt { salt: [7; 32] },
        Op::RegisterSite {
            site: Box::new(site()),
            options: SiteOptions::default(),
        },
        Op::RecordFailedSignIn {
            account: [6; 32],
            source: "10.0.0.1".into(),
            policy,
        },
        Op::Sweep {
            request_cutoff_ms: 1,
            auto_request_cutoff_ms: 1,
            budget: 1,
        },
        super::tests::keys::clear_federation_key("f1"),
        Op::AddPeerAgency(Box::new(baa_proto::federation::PeerAgency {
            issuer: "https://b.example".into(),
            pin: "p".into(),
            added_ms: 0,
        })),
        Op::RemovePeerAgency {
            issuer: "https://b.example".into(),
        },
        super::tests::sso::federated_sign_in([5; 32], "https://b.example"),
        Op::CompleteDeliveries { ids: vec![1] },
        Op::RepinPeer {
            issuer: "https://b.example".into(),
            pin: "p2".into(),
        },
        super::tests::sso::ticket_key("t1"),
        super::tests::sso::redeem_sealed(1, [1; 32], [2; 32], "c"),
        Op::RegisterSiteWithAlg {
            site: Box::new(site()),
            options: SiteOptions::default(),
            id_token_alg: baa_proto::sso::IdTokenAlg::EdDsa,
        },
        super::tests::sso::redeem_for_sealed_access(1, [1; 32], "c"),
        Op::RevokeSealedAccess {
            id: [3; 16],
            expires_ms: 1,
        },
        super::tests::sso::redeem_once(1, [1; 32], "c"),
        super::tests::sso::wrapped_ticket_key("t2"),
        super::tests::keys::wrapped_federation_key("f2"),
        Op::SetWrappedPairwiseSalt { salt: vec![1; 73] },
        Op::RewrapSecrets {
            secrets: vec![Rewrap {
                kind: SecretKind::SigningKey,
                kid: "k".into(),
                replaces: [1; 32],
                wrapped: vec![2; 80],
            }],
        },
        Op::ReplaceSession {
            session: Box::new(session()),
            account: [6; 32],
            source: "10.0.0.1".into(),
            previous: [1; 32],
        },
    ];
    pin("Op", &table, &samples, name);
}

/// Stored in `Op::RewrapSecrets` (the Raft log).
#[test]
fn secret_kind_variants_keep_their_order() {
    fn name(k: &SecretKind) -> &'static str {
        match k {
            SecretKind::SigningKey => "SigningKey",
            SecretKind::TicketKey => "TicketKey",
            SecretKind::FederationKey => "FederationKey",
            SecretKind::PairwiseSalt => "PairwiseSalt",
        }
    }
    let samples = [
        SecretKind::SigningKey,
        SecretKind::TicketKey,
        SecretKind::FederationKey,
        SecretKind::PairwiseSalt,
    ];
    pin(
        "SecretKind",
        &[
            ("SigningKey", 0),
            ("TicketKey", 1),
            ("FederationKey", 2),
            ("PairwiseSalt", 3),
        ],
        &samples,
        name,
    );
}

#[test]
fn outcome_variants_keep_their_order() {
    fn name(outcome: &Outcome) -> &'static str {
        match outcome {
            Outcome::User(_) => "User",
            Outcome::Purged(_) => "Purged",
            Outcome::Session(_) => "Session",
            Outcome::Site(_) => "Site",
            Outcome::Trust(_) => "Trust",
            Outcome::Granted(_) => "Granted",
            Outcome::Revoked(_) => "Revoked",
            Outcome::Removed(_) => "Removed",
            Outcome::Done => "Done",
            Outcome::DevicePending(_) => "DevicePending",
            Outcome::DeviceDecided(_) => "DeviceDecided",
            Outcome::Empty => "Empty",
            Outcome::RevokedAll(_) => "RevokedAll",
            Outcome::Swept { .. } => "Swept",
        }
    }
    let table = [
        ("User", 0),
        ("Purged", 1),
        ("Session", 2),
        ("Site", 3),
        ("Trust", 4),
        ("Granted", 5),
        ("Revoked", 6),
        ("Removed", 7),
        ("Done", 8),
        ("DevicePending", 9),
        ("DeviceDecided", 10),
        ("Empty", 11),
        ("RevokedAll", 12),
        ("Swept", 13),
    ];
    let samples = [
        Outcome::User(user()),
        Outcome::Purged(1),
        Outcome::Session(Box::new(session())),
        Outcome::Site(Box::new(site())),
        Outcome::Trust(Box::new(trust())),
        Outcome::Granted(Box::new(Grant {
            user: user(),
            sid: "sid".into(),
            auth_time_ms: 0,
            client_id: "shop".into(),
            nonce: None,
            scopes: vec![],
            params: LoginParams::default(),
            expires_ms: 0,
        })),
        Outcome::Revoked(revoked()),
        Outcome::Removed(true),
        Outcome::Done,
        Outcome::DevicePending(DevicePoll::Pending),
        Outcome::DeviceDecided("cli".into()),
        Outcome::Empty,
        Outcome::RevokedAll(vec![revoked()]),
        Outcome::Swept {
            removed: 1,
            wrapped: false,
        },
    ];
    pin("Outcome", &table, &samples, name);
}

/// A command's result is a `Result`, stored in request records.
#[test]
fn command_result_variants_keep_their_order() {
    fn name(result: &CommandResult) -> &'static str {
        match result {
            Ok(_) => "Ok",
            Err(_) => "Err",
        }
    }
    let samples: [CommandResult; 2] = [
        Ok(Outcome::Done),
        Err(ApplyError::new(ErrorCode::InvalidRequest, "no")),
    ];
    pin("CommandResult", &[("Ok", 0), ("Err", 1)], &samples, name);
}

/// Error codes are stored in the refusals of remembered request results.
#[test]
fn error_code_variants_keep_their_order() {
    fn name(code: &ErrorCode) -> &'static str {
        match code {
            ErrorCode::InvalidRequest => "InvalidRequest",
            ErrorCode::MalformedJson => "MalformedJson",
            ErrorCode::UnsupportedMediaType => "UnsupportedMediaType",
            ErrorCode::PayloadTooLarge => "PayloadTooLarge",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::MethodNotAllowed => "MethodNotAllowed",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::UserNotFound => "UserNotFound",
            ErrorCode::UserExists => "UserExists",
            ErrorCode::NoLeader => "NoLeader",
            ErrorCode::Timeout => "Timeout",
            ErrorCode::AlreadyInitialized => "AlreadyInitialized",
            ErrorCode::MembershipRejected => "MembershipRejected",
            ErrorCode::NotLeader => "NotLeader",
            ErrorCode::MalformedFrame => "MalformedFrame",
            ErrorCode::NotAMember => "NotAMember",
            ErrorCode::SiteNotFound => "SiteNotFound",
            ErrorCode::SiteExists => "SiteExists",
            ErrorCode::InvalidGrant => "InvalidGrant",
            ErrorCode::InvalidClient => "InvalidClient",
            ErrorCode::SessionNotFound => "SessionNotFound",
            ErrorCode::TrustNotFound => "TrustNotFound",
            ErrorCode::TooManyAttempts => "TooManyAttempts",
            ErrorCode::NoSigningKey => "NoSigningKey",
            ErrorCode::UnsupportedGrantType => "UnsupportedGrantType",
            ErrorCode::InvalidScope => "InvalidScope",
            ErrorCode::CsrfMismatch => "CsrfMismatch",
            ErrorCode::AuthorizationPending => "AuthorizationPending",
            ErrorCode::SlowDown => "SlowDown",
            ErrorCode::ExpiredToken => "ExpiredToken",
            ErrorCode::AccessDenied => "AccessDenied",
            ErrorCode::BadGateway => "BadGateway",
            ErrorCode::TemporarilyUnavailable => "TemporarilyUnavailable",
            ErrorCode::StorageError => "StorageError",
            ErrorCode::Internal => "Internal",
            ErrorCode::UnknownSite => "UnknownSite",
            ErrorCode::InvalidRedirectUri => "InvalidRedirectUri",
            ErrorCode::UnsupportedResponseType => "UnsupportedResponseType",
            ErrorCode::LoginRequired => "LoginRequired",
            ErrorCode::ConsentRequired => "ConsentRequired",
            ErrorCode::PeerExists => "PeerExists",
            ErrorCode::PeerNotFound => "PeerNotFound",
            ErrorCode::PinMismatch => "PinMismatch",
            ErrorCode::PeerUnreachable => "PeerUnreachable",
            ErrorCode::AccountNotLinked => "AccountNotLinked",
            ErrorCode::PeerSessionRefused => "PeerSessionRefused",
            ErrorCode::UnsupportedVersion => "UnsupportedVersion",
            ErrorCode::RequestTimeout => "RequestTimeout",
        }
    }
    let table = [
        ("InvalidRequest", 0),
        ("MalformedJson", 1),
        ("UnsupportedMediaType", 2),
        ("PayloadTooLarge", 3),
        ("NotFound", 4),
        ("MethodNotAllowed", 5),
        ("Unauthorized", 6),
        ("UserNotFound", 7),
        ("UserExists", 8),
        ("NoLeader", 9),
        ("Timeout", 10),
        ("AlreadyInitialized", 11),
        ("MembershipRejected", 12),
        ("NotLeader", 13),
        ("MalformedFrame", 14),
        ("NotAMember", 15),
        ("SiteNotFound", 16),
        ("SiteExists", 17),
        ("InvalidGrant", 18),
        ("InvalidClient", 19),
        ("SessionNotFound", 20),
        ("TrustNotFound", 21),
        ("TooManyAttempts", 22),
        ("NoSigningKey", 23),
        ("UnsupportedGrantType", 24),
        ("InvalidScope", 25),
        ("CsrfMismatch", 26),
        ("AuthorizationPending", 27),
        ("SlowDown", 28),
        ("ExpiredToken", 29),
        ("AccessDenied", 30),
        ("BadGateway", 31),
        ("TemporarilyUnavailable", 32),
        ("StorageError", 33),
        ("Internal", 34),
        ("UnknownSite", 35),
        ("InvalidRedirectUri", 36),
        ("UnsupportedResponseType", 37),
        ("LoginRequired", 38),
        ("ConsentRequired", 39),
        ("PeerExists", 40),
        ("PeerNotFound", 41),
        ("PinMismatch", 42),
        ("PeerUnreachable", 43),
        ("AccountNotLinked", 44),
        ("PeerSessionRefused", 45),
        ("UnsupportedVersion", 46),
        ("RequestTimeout", 47),
    ];
    let samples = [
        ErrorCode::InvalidRequest,
        ErrorCode::MalformedJson,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::PayloadTooLarge,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Unauthorized,
        ErrorCode::UserNotFound,
        ErrorCode::UserExists,
        ErrorCode::NoLeader,
        ErrorCode::Timeout,
        ErrorCode::AlreadyInitialized,
        ErrorCode::MembershipRejected,
        ErrorCode::NotLeader,
        ErrorCode::MalformedFrame,
        ErrorCode::NotAMember,
        ErrorCode::SiteNotFound,
        ErrorCode::SiteExists,
        ErrorCode::InvalidGrant,
        ErrorCode::InvalidClient,
        ErrorCode::SessionNotFound,
        ErrorCode::TrustNotFound,
        ErrorCode::TooManyAttempts,
        ErrorCode::NoSigningKey,
        ErrorCode::UnsupportedGrantType,
        ErrorCode::InvalidScope,
        ErrorCode::CsrfMismatch,
        ErrorCode::AuthorizationPending,
        ErrorCode::SlowDown,
        ErrorCode::ExpiredToken,
        ErrorCode::AccessDenied,
        ErrorCode::BadGateway,
        ErrorCode::TemporarilyUnavailable,
        ErrorCode::StorageError,
        ErrorCode::Internal,
        ErrorCode::UnknownSite,
        ErrorCode::InvalidRedirectUri,
        ErrorCode::UnsupportedResponseType,
        ErrorCode::LoginRequired,
        ErrorCode::ConsentRequired,
        ErrorCode::PeerExists,
        ErrorCode::PeerNotFound,
        ErrorCode::PinMismatch,
        ErrorCode::PeerUnreachable,
        ErrorCode::AccountNotLinked,
        ErrorCode::PeerSessionRefused,
        ErrorCode::UnsupportedVersion,
        ErrorCode::RequestTimeout,
    ];
    pin("ErrorCode", &table, &samples, name);
}

#[test]
fn consistency_variants_keep_their_order() {
    fn name(c: &Consistency) -> &'static str {
        match c {
            Consistency::Local => "Local",
            Consistency::Linearizable => "Linearizable",
        }
    }
    let samples = [Consistency::Local, Consistency::Linearizable];
    pin(
        "Consistency",
        &[("Local", 0), ("Linearizable", 1)],
        &samples,
        name,
    );
}

/// Stored in a site's options.
#[test]
fn response_mode_variants_keep_their_order() {
    fn name(m: &ResponseMode) -> &'static str {
        match m {
            ResponseMode::Query => "Query",
            ResponseMode::FormPost => "FormPost",
        }
    }
    let samples = [ResponseMode::Query, ResponseMode::FormPost];
    pin(
        "ResponseMode",
        &[("Query", 0), ("FormPost", 1)],
        &samples,
        name,
    );
}

/// Stored per site (family `A/`).
#[test]
fn id_token_alg_variants_keep_their_order() {
    use baa_proto::sso::IdTokenAlg;
    fn name(a: &IdTokenAlg) -> &'static str {
        match a {
            IdTokenAlg::Rs256 => "Rs256",
            IdTokenAlg::Es256 => "Es256",
            IdTokenAlg::EdDsa => "EdDsa",
        }
    }
    pin(
        "IdTokenAlg",
        &[("Rs256", 0), ("Es256", 1), ("EdDsa", 2)],
        &IdTokenAlg::ALL,
        name,
    );
}

/// Stored in a trust's login parameters (and in grants).
#[test]
fn account_name_variants_keep_their_order() {
    fn name(a: &AccountName) -> &'static str {
        match a {
            AccountName::Username => "Username",
            AccountName::Pseudonym => "Pseudonym",
        }
    }
    let samples = [AccountName::Username, AccountName::Pseudonym];
    pin(
        "AccountName",
        &[("Username", 0), ("Pseudonym", 1)],
        &samples,
        name,
    );
}

/// Stored in device grants.
#[test]
fn device_status_variants_keep_their_order() {
    fn name(s: &DeviceStatus) -> &'static str {
        match s {
            DeviceStatus::Pending => "Pending",
            DeviceStatus::Approved { .. } => "Approved",
            DeviceStatus::Denied => "Denied",
            DeviceStatus::Done => "Done",
        }
    }
    let table = [("Pending", 0), ("Approved", 1), ("Denied", 2), ("Done", 3)];
    let samples = [
        DeviceStatus::Pending,
        DeviceStatus::Approved {
            session_key: [1; 32],
        },
        DeviceStatus::Denied,
        DeviceStatus::Done,
    ];
    pin("DeviceStatus", &table, &samples, name);
}

/// Stored in the outcome of a device poll.
#[test]
fn device_poll_variants_keep_their_order() {
    fn name(p: &DevicePoll) -> &'static str {
        match p {
            DevicePoll::Pending => "Pending",
            DevicePoll::SlowDown(_) => "SlowDown",
        }
    }
    let samples = [DevicePoll::Pending, DevicePoll::SlowDown(10)];
    pin(
        "DevicePoll",
        &[("Pending", 0), ("SlowDown", 1)],
        &samples,
        name,
    );
}

#[test]
fn throttle_subject_variants_keep_their_order() {
    fn name(s: &ThrottleSubject) -> &'static str {
        match s {
            ThrottleSubject::Account(_) => "Account",
            ThrottleSubject::Source(_) => "Source",
            ThrottleSubject::Pair(..) => "Pair",
        }
    }
    let table = [("Account", 0), ("Source", 1), ("Pair", 2)];
    let samples = [
        ThrottleSubject::Account([6; 32]),
        ThrottleSubject::Source("10.0.0.1".into()),
        ThrottleSubject::Pair([6; 32], "10.0.0.1".into()),
    ];
    pin("ThrottleSubject", &table, &samples, name);
}

/// openraft's entry payload is stored in the log: an upgrade of openraft
/// that reordered it would make the log unreadable.
#[test]
fn entry_payload_variants_keep_their_order() {
    fn name(p: &EntryPayload<TypeConfig>) -> &'static str {
        match p {
            EntryPayload::Blank => "Blank",
            EntryPayload::Normal(_) => "Normal",
            EntryPayload::Membership(_) => "Membership",
        }
    }
    let table = [("Blank", 0), ("Normal", 1), ("Membership", 2)];
    let samples: [EntryPayload<TypeConfig>; 3] = [
        EntryPayload::Blank,
        EntryPayload::Normal(Proposal { commands: vec![] }),
        EntryPayload::Membership(openraft::Membership::new(
            vec![BTreeSet::from([1])],
            BTreeMap::from([(1, BaaNode::default())]),
        )),
    ];
    pin("EntryPayload", &table, &samples, name);
}
