//! Random secrets (tickets, tokens, CSRF values, session secrets): one way
//! to make them — 256 bits from the operating system, base64url — and to
//! name them in storage (by SHA-256, never the value).

use baa_proto::sso::{secret_hash, SecretHash};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

/// `bytes` base64url-encoded, with the hash under which storage names them.
pub fn encode(bytes: &[u8]) -> (String, SecretHash) {
    let value = URL_SAFE_NO_PAD.encode(bytes);
    let hash = secret_hash(value.as_bytes());
    (value, hash)
}

/// A fresh 256-bit secret, base64url (43 characters), and its hash.
pub fn random_secret() -> (String, SecretHash) {
    encode(&random_bytes::<32>())
}

/// Creates `path` holding `bytes`, readable and writable by its owner only
/// (mode 0600), and flushed to disk; an existing file is never replaced.
pub fn create_private_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// `N` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_43_characters_named_by_their_hash() {
        let (a, ha) = random_secret();
        let (b, _) = random_secret();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert_eq!(ha, secret_hash(a.as_bytes()));
    }
}
