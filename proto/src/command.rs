//! Commands: the only way replicated state changes. Each command carries the time
//! chosen by the node that proposed it, so applying it never reads a clock and
//! every node reaches the same state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::User;
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
}

impl Op {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::CreateUser(_) => "create_user",
            Op::UpdateUser { .. } => "update_user",
            Op::SetUserDisabled { .. } => "set_user_disabled",
            Op::PurgeRequestResults { .. } => "purge_request_results",
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
    /// Entries that carry no command (blank and membership entries).
    Empty,
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
