//! JSON shapes of the public admin API and the binary shapes of the cluster
//! port's own RPCs (forwarded writes and read-index requests). Shared by the
//! node, the CLI and the tests so all three agree on the wire.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResult, Consistency};
use crate::model::{BaaNode, NodeId, User};
use crate::ErrorCode;

/// The body of every error response: a stable code and a human message.
/// Named as in OAuth 2.0 so the same shape serves the OIDC endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub error: ErrorCode,
    /// Human-readable explanation.
    pub error_description: String,
}

/// `POST /admin/v1/users`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// Unique login name: 1–64 of `a-z 0-9 . _ -`.
    pub username: String,
    /// Name shown to people; defaults to the username.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Contact address.
    #[serde(default)]
    pub email: Option<String>,
    /// Group memberships.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Free-form attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Initial password; hashed with argon2id by the receiving node.
    #[serde(default)]
    pub password: Option<String>,
}

/// `PATCH /admin/v1/users/{username}`: absent fields are left alone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    /// New display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// New email; `""` clears it.
    #[serde(default)]
    pub email: Option<String>,
    /// New group list.
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    /// Attributes to set; a `null` value removes the attribute.
    #[serde(default)]
    pub attributes: BTreeMap<String, Option<String>>,
    /// New password; hashed with argon2id by the receiving node.
    #[serde(default)]
    pub password: Option<String>,
}

/// A user as the admin API shows it: everything but the password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    /// Stable numeric id.
    pub id: u64,
    /// Login name.
    pub username: String,
    /// Name shown to people.
    pub display_name: String,
    /// Contact address.
    pub email: Option<String>,
    /// Group memberships.
    pub groups: Vec<String>,
    /// Free-form attributes.
    pub attributes: BTreeMap<String, String>,
    /// Whether a password is set.
    pub has_password: bool,
    /// Disabled accounts cannot sign in.
    pub disabled: bool,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Last change, ms since the Unix epoch.
    pub updated_ms: u64,
    /// Number of changes applied to the record.
    pub revision: u64,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            id: u.id,
            username: u.username.clone(),
            display_name: u.display_name.clone(),
            email: u.email.clone(),
            groups: u.groups.clone(),
            attributes: u.attributes.clone(),
            has_password: u.password_hash.is_some(),
            disabled: u.disabled,
            created_ms: u.created_ms,
            updated_ms: u.updated_ms,
            revision: u.revision,
        }
    }
}

/// How many items a page of an admin list holds when the query names no `limit`.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
/// The most items a page of an admin list may hold.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// The query of the admin lists (`GET /admin/v1/users`, `/admin/v1/sites`,
/// `/admin/v1/users/{username}/sessions`): one page at a time, in an order
/// that stays put while items come and go, each page starting after the
/// last item of the one before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// At most this many items, 1 to [`MAX_PAGE_LIMIT`]; default
    /// [`DEFAULT_PAGE_LIMIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The `next_cursor` of the page before (opaque); absent: the first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Only the items whose name (username, client id) starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Read this node's state, or confirm with the leader first.
    #[serde(default)]
    pub consistency: Consistency,
}

impl ListQuery {
    /// The query of the page after one whose `next_cursor` is `next`; `None`
    /// when that page was the last.
    pub fn after(&self, next: Option<String>) -> Option<ListQuery> {
        next.map(|cursor| ListQuery {
            cursor: Some(cursor),
            ..self.clone()
        })
    }
}

/// One page of an admin list: its items and where the next page starts.
pub trait ListPage {
    /// What the list holds.
    type Item;
    /// The items and the cursor of the next page (`None` on the last page).
    fn into_parts(self) -> (Vec<Self::Item>, Option<String>);
}

/// Implements [`ListPage`] for a list whose items are in field `$items`.
macro_rules! list_page {
    ($list:ty, $item:ty, $items:ident) => {
        impl ListPage for $list {
            type Item = $item;
            fn into_parts(self) -> (Vec<$item>, Option<String>) {
                (self.$items, self.next_cursor)
            }
        }
    };
}

/// `GET /admin/v1/users`: one page of users.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserList {
    /// Users in username order.
    pub users: Vec<UserView>,
    /// The `cursor` of the next page; `null` on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

list_page!(UserList, UserView, users);

/// `POST /admin/v1/cluster/join`: add a node as learner, then (by default) promote it to voter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The new node's id (must be unused).
    pub id: NodeId,
    /// Its public `host:port`.
    pub public_addr: String,
    /// Its cluster `host:port`.
    pub cluster_addr: String,
    /// Promote to voter once the learner has caught up (default true).
    #[serde(default = "default_true")]
    pub voter: bool,
}

fn default_true() -> bool {
    true
}

/// `POST /admin/v1/cluster/leave`: remove a node from the membership.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaveRequest {
    /// The node to remove.
    pub id: NodeId,
}

/// `GET /admin/v1/cluster/status`: one node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The answering node.
    pub node_id: NodeId,
    /// `Leader`, `Follower`, `Candidate` or `Learner`.
    pub state: String,
    /// Whether the cluster has been initialised (from this node's view).
    pub initialized: bool,
    /// Current leader, if known.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Index of the last log entry.
    pub last_log_index: Option<u64>,
    /// Index of the last applied entry.
    pub applied_index: Option<u64>,
    /// Index covered by the latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Index up to which the log was purged.
    pub purged_index: Option<u64>,
    /// SHA-256 of the state machine's records (hex), comparable between nodes
    /// at the same applied index; empty when entries kept being applied
    /// while it was taken (compare digests of a quiet cluster).
    pub digest: String,
    /// Voting members.
    pub voters: Vec<NodeId>,
    /// Non-voting members.
    pub learners: Vec<NodeId>,
    /// Addresses of every member.
    pub nodes: BTreeMap<NodeId, BaaNode>,
}

/// `POST /admin/v1/cluster/snapshot`: the snapshot the node built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBuilt {
    /// The answering node.
    pub node_id: NodeId,
    /// Index covered by the node's snapshot now (at least what it had
    /// applied when asked).
    pub snapshot_index: Option<u64>,
    /// Index up to which the node's log is purged now.
    pub purged_index: Option<u64>,
}

/// Cluster port: writes forwarded by a follower to the leader, proposed
/// together as one log entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedWrite {
    /// The commands to propose, in order.
    pub commands: Vec<Command>,
}

/// Cluster port: why a forwarded request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardError {
    /// The receiver is not the leader; it names the leader if it knows one.
    NotLeader {
        /// The leader the receiver knows of.
        leader: Option<NodeId>,
    },
    /// Anything else, with a stable code.
    Failed {
        /// Stable code.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
}

/// Cluster port: the reply to a [`ForwardedWrite`]: one result per command.
pub type ForwardedWriteReply = Result<Vec<CommandResult>, ForwardError>;

/// Cluster port: a membership change a node forwards to the leader (an
/// administrator may ask any node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a node (as learner, then by default as voter).
    Join(JoinRequest),
    /// Remove a node.
    Leave(NodeId),
}

/// Cluster port: the leader's answer to a membership change.
pub type MembershipReply = Result<ClusterStatus, ForwardError>;

/// Cluster port: the reply to a read-index request: the log index a follower
/// must have applied before its local read is linearizable.
pub type ReadIndexReply = Result<Option<u64>, ForwardError>;

/// `POST /admin/v1/sites`: register a partner site (OIDC client).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSiteRequest {
    /// `client_id`: 1–64 of `a-z 0-9 . _ -`.
    pub client_id: String,
    /// Name shown to users; defaults to the client id.
    #[serde(default)]
    pub name: Option<String>,
    /// Login handlers (exact redirect URIs).
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may return to.
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    /// OIDC back-channel logout URI.
    #[serde(default)]
    pub backchannel_logout_uri: Option<String>,
    /// Scopes the site may ask for; default `openid profile email`.
    #[serde(default)]
    pub allowed_scopes: Option<Vec<String>>,
    /// A public client (no secret; PKCE required).
    #[serde(default)]
    pub public: bool,
    /// The client secret to use (at least 32 characters); generated when absent.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// How tickets reach the site when its request names no `response_mode`:
    /// `query` (default, as OIDC says) or `form_post` (seed-style sites).
    #[serde(default)]
    pub default_response_mode: Option<crate::sso::ResponseMode>,
    /// The algorithm of its ID tokens: `RS256` (default), `ES256` or `EdDSA`.
    #[serde(default)]
    pub id_token_signed_response_alg: Option<crate::sso::IdTokenAlg>,
}

/// A partner site as the admin API shows it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteView {
    /// `client_id`.
    pub client_id: String,
    /// Name shown to users.
    pub name: String,
    /// Login handlers.
    pub redirect_uris: Vec<String>,
    /// Post-logout redirect URIs.
    pub post_logout_redirect_uris: Vec<String>,
    /// Back-channel logout URI.
    pub backchannel_logout_uri: Option<String>,
    /// Allowed scopes.
    pub allowed_scopes: Vec<String>,
    /// Whether it is a public client.
    pub public: bool,
    /// How tickets reach it when its request names no `response_mode`.
    #[serde(default)]
    pub default_response_mode: crate::sso::ResponseMode,
    /// The algorithm of its ID tokens.
    #[serde(default)]
    pub id_token_signed_response_alg: crate::sso::IdTokenAlg,
    /// Registration time, ms.
    pub created_ms: u64,
}

impl SiteView {
    /// The view of `s` with its options and ID-token algorithm.
    pub fn new(
        s: &crate::sso::Site,
        options: crate::sso::SiteOptions,
        id_token_alg: crate::sso::IdTokenAlg,
    ) -> Self {
        Self {
            default_response_mode: options.default_response_mode,
            id_token_signed_response_alg: id_token_alg,
            ..Self::from(s)
        }
    }
}

impl From<&crate::sso::Site> for SiteView {
    fn from(s: &crate::sso::Site) -> Self {
        Self {
            client_id: s.client_id.clone(),
            name: s.name.clone(),
            redirect_uris: s.redirect_uris.clone(),
            post_logout_redirect_uris: s.post_logout_redirect_uris.clone(),
            backchannel_logout_uri: s.backchannel_logout_uri.clone(),
            allowed_scopes: s.allowed_scopes.clone(),
            public: s.secret_hash.is_none(),
            default_response_mode: Default::default(),
            id_token_signed_response_alg: Default::default(),
            created_ms: s.created_ms,
        }
    }
}

/// Answer to `POST /admin/v1/sites`: the site and, for a confidential
/// client, its secret (shown this once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedSite {
    /// The site.
    pub site: SiteView,
    /// The client secret, if confidential.
    pub client_secret: Option<String>,
}

/// `POST /admin/v1/federation/peers`: add a peer agency.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPeerRequest {
    /// The peer's issuer URL.
    pub issuer: String,
    /// RFC 7638 thumbprint of the peer's federation key, learnt out of band.
    pub pin: String,
}

/// `GET /admin/v1/federation/peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerList {
    /// Every peer agency, by issuer.
    pub peers: Vec<crate::federation::PeerAgency>,
}

/// `GET /admin/v1/sites`: one page of sites.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteList {
    /// Sites in client id order.
    pub sites: Vec<SiteView>,
    /// The `cursor` of the next page; `null` on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

list_page!(SiteList, SiteView, sites);

/// `GET /admin/v1/users/{username}/trust`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustList {
    /// The user's trust relationships.
    pub trust: Vec<crate::sso::Trust>,
}

/// A session as the admin API shows it: no secret, only its public handle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// Public handle (`sid`, as in ID tokens and the reference cookie).
    pub sid: String,
    /// Sign-in time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Last use, ms since the Unix epoch.
    pub last_seen_ms: u64,
    /// When it ends unless used again (idle timeout), ms since the Unix epoch.
    pub idle_expiry_ms: u64,
    /// When it ends regardless (absolute lifetime), ms since the Unix epoch.
    pub absolute_expiry_ms: u64,
    /// Sign-in methods.
    pub methods: Vec<String>,
    /// Sites that got tickets in the session.
    pub sites: Vec<String>,
}

impl From<&crate::sso::Session> for SessionView {
    fn from(s: &crate::sso::Session) -> Self {
        SessionView {
            sid: s.sid.clone(),
            created_ms: s.created_ms,
            last_seen_ms: s.last_seen_ms,
            idle_expiry_ms: s.last_seen_ms.saturating_add(s.idle_timeout_ms),
            absolute_expiry_ms: s.absolute_expiry_ms,
            methods: s.methods.clone(),
            sites: s.sites.clone(),
        }
    }
}

/// `GET /admin/v1/users/{username}/sessions`: one page of a user's live
/// sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionList {
    /// Live sessions, in an order that stays put between pages (not by
    /// time: sort by `created_ms` to show them oldest first).
    pub sessions: Vec<SessionView>,
    /// The `cursor` of the next page; `null` on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

list_page!(SessionList, SessionView, sessions);

/// `DELETE /admin/v1/users/{username}/sessions` and `DELETE /admin/v1/sessions/{sid}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionsEnded {
    /// How many sessions ended.
    pub revoked: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_without_a_cursor_and_say_null_on_the_last_page() {
        let old: UserList = serde_json::from_str(r#"{"users":[]}"#).unwrap();
        assert_eq!(old.next_cursor, None);
        let last = SiteList {
            sites: vec![],
            next_cursor: None,
        };
        assert_eq!(
            serde_json::to_value(last).unwrap(),
            serde_json::json!({"sites": [], "next_cursor": null})
        );
        let q = ListQuery {
            limit: Some(5),
            ..Default::default()
        };
        let next = q.after(Some("YWxpY2U".into())).unwrap();
        assert_eq!(
            (next.limit, next.cursor.as_deref()),
            (Some(5), Some("YWxpY2U"))
        );
        assert_eq!(q.after(None), None);
    }
}
