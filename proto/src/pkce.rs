//! PKCE (RFC 7636) with the S256 method only: the one definition of a
//! well-formed verifier or challenge and of the challenge of a verifier,
//! shared by the agency, its CLI and the demo partner site.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// The S256 challenge of `verifier` (RFC 7636 §4.2).
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether `v` has the syntax of a verifier (RFC 7636 §4.1): 43 to 128
/// unreserved characters. An S256 challenge has the same syntax.
pub fn well_formed(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifiers_are_43_to_128_unreserved_characters() {
        assert!(well_formed(&"a".repeat(43)));
        assert!(well_formed(&"-._~".repeat(32)));
        assert!(!well_formed(&"a".repeat(42)));
        assert!(!well_formed(&"a".repeat(129)));
        assert!(!well_formed(&format!("{}+", "a".repeat(43))));
        assert!(!well_formed(&format!("{}=", "a".repeat(43))));
    }
}
