//! The replicated data model. Records here are what the state machine stores;
//! secrets are kept only as hashes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest accepted username.
pub const MAX_USERNAME_LEN: usize = 64;
/// Longest accepted display name, email or group name.
pub const MAX_TEXT_LEN: usize = 256;
/// Most groups one user may be in.
pub const MAX_GROUPS: usize = 64;
/// Most attributes one user may carry.
pub const MAX_ATTRIBUTES: usize = 4096;
/// Longest attribute key.
pub const MAX_ATTRIBUTE_KEY_LEN: usize = 64;
/// Longest attribute value.
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 1024;

/// A Raft node's identity.
pub type NodeId = u64;

/// Where a node can be reached: its public (HTTPS) and cluster (mTLS) addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaaNode {
    /// `host:port` of the public HTTPS listener (user pages, admin API).
    pub public_addr: String,
    /// `host:port` of the cluster listener (Raft RPC, forwarded writes), mTLS only.
    pub cluster_addr: String,
}

impl std::fmt::Display for BaaNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "public={} cluster={}",
            self.public_addr, self.cluster_addr
        )
    }
}

/// A user account of the agency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Stable numeric id, assigned by the state machine in log order.
    pub id: u64,
    /// Unique login name (lower case).
    pub username: String,
    /// Name shown to people.
    pub display_name: String,
    /// Contact address, if known.
    pub email: Option<String>,
    /// Group memberships.
    pub groups: Vec<String>,
    /// Free-form attributes that partner sites may be given.
    pub attributes: BTreeMap<String, String>,
    /// argon2id PHC string; `None` when the account has no password.
    pub password_hash: Option<String>,
    /// A disabled account cannot sign in.
    pub disabled: bool,
    /// Creation time (ms since the Unix epoch, proposer's clock).
    pub created_ms: u64,
    /// Time of the last change (ms since the Unix epoch, proposer's clock).
    pub updated_ms: u64,
    /// Number of changes applied to this record; starts at 1.
    pub revision: u64,
}

/// Why a field value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

/// Checks a username: 1–64 characters of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn validate_username(name: &str) -> Result<(), ValidationError> {
    let ok_len = !name.is_empty() && name.len() <= MAX_USERNAME_LEN;
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok_len && ok_chars && ok_start {
        Ok(())
    } else {
        Err(ValidationError(format!(
            "username must be 1-{MAX_USERNAME_LEN} characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

/// Checks a free text field (display name, email, group): length and no control characters.
pub fn validate_text(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.len() > MAX_TEXT_LEN {
        return Err(ValidationError(format!(
            "{field} is longer than {MAX_TEXT_LEN} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

/// Checks a group list.
pub fn validate_groups(groups: &[String]) -> Result<(), ValidationError> {
    if groups.len() > MAX_GROUPS {
        return Err(ValidationError(format!("at most {MAX_GROUPS} groups")));
    }
    for g in groups {
        if g.is_empty() {
            return Err(ValidationError("group names must not be empty".into()));
        }
        validate_text("group", g)?;
    }
    Ok(())
}

/// Checks one attribute key and (if present) its value.
pub fn validate_attribute(key: &str, value: Option<&str>) -> Result<(), ValidationError> {
    let ok_key = !key.is_empty()
        && key.len() <= MAX_ATTRIBUTE_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok_key {
        return Err(ValidationError(format!(
            "attribute keys must be 1-{MAX_ATTRIBUTE_KEY_LEN} characters of A-Z, a-z, 0-9, '.', '_' or '-'"
        )));
    }
    if let Some(v) = value {
        if v.len() > MAX_ATTRIBUTE_VALUE_LEN {
            return Err(ValidationError(format!(
                "attribute {key} is longer than {MAX_ATTRIBUTE_VALUE_LEN} bytes"
            )));
        }
        if v.chars().any(char::is_control) {
            return Err(ValidationError(format!(
                "attribute {key} contains control characters"
            )));
        }
    }
    Ok(())
}

/// Most redirect URIs one site may register.
pub const MAX_REDIRECT_URIS: usize = 16;
/// Longest accepted URI.
pub const MAX_URI_LEN: usize = 2048;

/// Checks a client id: 1–64 characters of `a-z 0-9 . _ -`.
pub fn validate_client_id(id: &str) -> Result<(), ValidationError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ValidationError(
            "client_id must be 1-64 characters of a-z, 0-9, '.', '_' or '-'".into(),
        ))
    }
}

/// Checks a URI a site registers: absolute `https://` (or `http://` on a
/// loopback address, for native apps), no fragment, no user info, no
/// whitespace or control characters.
pub fn validate_registered_uri(field: &str, uri: &str) -> Result<(), ValidationError> {
    let bad = |why: &str| Err(ValidationError(format!("{field} {uri:?}: {why}")));
    if uri.is_empty() || uri.len() > MAX_URI_LEN {
        return bad("must be 1-2048 characters");
    }
    if uri.bytes().any(|b| b <= b' ' || b == 0x7f || b >= 0x80) {
        return bad("must be ASCII without spaces or control characters");
    }
    if uri.contains('#') {
        return bad("must not have a fragment");
    }
    let rest = if let Some(r) = uri.strip_prefix("https://") {
        r
    } else if let Some(r) = uri.strip_prefix("http://") {
        let host = r.split(['/', '?']).next().unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        if !matches!(host, "127.0.0.1" | "[::1]" | "localhost") {
            return bad("must use https (http only on a loopback address)");
        }
        r
    } else {
        return bad("must be an absolute https URI");
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') || authority.contains('\\') {
        return bad("must name a host, without user info");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_uris() {
        for ok in [
            "https://shop.example/callback",
            "https://shop.example:8443/cb?x=1",
            "http://127.0.0.1/cb",
            "http://[::1]:8080/cb",
        ] {
            assert!(validate_registered_uri("u", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "http://shop.example/cb",
            "https://shop.example/cb#frag",
            "https://user@shop.example/cb",
            "https://shop.example/c b",
            "javascript:alert(1)",
            "https:///nohost",
            "http://127.0.0.1.evil.example/cb",
        ] {
            assert!(validate_registered_uri("u", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usernames() {
        assert!(validate_username("alice").is_ok());
        assert!(validate_username("a.b-c_1").is_ok());
        assert!(validate_username("").is_err());
        assert!(validate_username("Alice").is_err());
        assert!(validate_username("-alice").is_err());
        assert!(validate_username("al ice").is_err());
        assert!(validate_username(&"a".repeat(65)).is_err());
    }

    #[test]
    fn attributes() {
        assert!(validate_attribute("k-1", Some("v")).is_ok());
        assert!(validate_attribute("k-1", None).is_ok());
        assert!(validate_attribute("", Some("v")).is_err());
        assert!(validate_attribute("a b", Some("v")).is_err());
        assert!(validate_attribute("k", Some("\u{0}")).is_err());
        assert!(validate_attribute("k", Some(&"x".repeat(1025))).is_err());
    }
}
