//! The SSO cookie's value format (no cryptography here: the node signs and
//! verifies). A value is
//! `v1.<agency>.<session secret, base64url>.<issued, unix seconds>.<kid>.<signature, base64url>`
//! where the signature is RS256 over everything before the last dot, by the
//! issuing agency's key `kid`, which that agency publishes in its JWKS.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Cookie name. `__Secure-` rather than `__Host-`: the cookie must carry the
/// shared `Domain` so partner sites under it and every agency node see it.
pub const SSO_COOKIE: &str = "__Secure-baa_sso";
/// Longest accepted cookie value.
pub const MAX_COOKIE_LEN: usize = 1024;
/// Bytes of randomness in a session secret.
pub const SESSION_SECRET_LEN: usize = 32;

/// Name of the CSRF cookie (double submit). The `__Host-` prefix makes
/// browsers refuse it from any other host or with a `Domain`, which holds only
/// if its name is compared exactly: see [`exact_value`].
pub const CSRF_COOKIE: &str = "__Host-baa_csrf";

/// The value of the cookie named exactly `name` (byte for byte: no
/// percent-decoding, no trimming of anything but the separator's spaces) in
/// the `Cookie` header values `headers`. `None` when it is absent or sent
/// more than once: a second cookie of the same name can only come from
/// another host under a shared domain, and which one the browser meant is
/// unknowable.
pub fn exact_value<'a>(headers: impl IntoIterator<Item = &'a [u8]>, name: &str) -> Option<&'a str> {
    let mut found = None;
    for header in headers {
        for pair in header.split(|&b| b == b';') {
            let pair = pair.strip_prefix(b" ").unwrap_or(pair);
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if &pair[..eq] != name.as_bytes() {
                continue;
            }
            let value = std::str::from_utf8(&pair[eq + 1..]).ok()?;
            if found.replace(value.trim_end_matches(' ')).is_some() {
                return None;
            }
        }
    }
    found
}

/// Why a cookie value was refused. Callers treat every case as "no session".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// Not of the expected shape.
    #[error("malformed SSO cookie")]
    Malformed,
    /// A format version this node does not know.
    #[error("unsupported SSO cookie version")]
    Version,
}

/// A parsed, not yet verified, SSO cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoCookie {
    /// Name of the issuing agency.
    pub agency: String,
    /// The session secret (its SHA-256 is the session key).
    pub secret: Vec<u8>,
    /// Issue time, Unix seconds.
    pub issued_s: u64,
    /// Id of the signing key.
    pub kid: String,
    /// The signed text: everything before the signature.
    pub signed: String,
    /// The signature bytes.
    pub signature: Vec<u8>,
}

/// Checks a name used inside the cookie (agency name, key id).
pub fn valid_label(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The text to sign for a new cookie.
pub fn signing_input(agency: &str, secret: &[u8], issued_s: u64, kid: &str) -> String {
    format!(
        "v1.{agency}.{}.{issued_s}.{kid}",
        URL_SAFE_NO_PAD.encode(secret)
    )
}

/// The complete cookie value from the signing input and its signature.
pub fn assemble(signing_input: &str, signature: &[u8]) -> String {
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Parses a cookie value without verifying it.
pub fn parse(value: &str) -> Result<SsoCookie, CookieError> {
    if value.len() > MAX_COOKIE_LEN || !value.is_ascii() {
        return Err(CookieError::Malformed);
    }
    let (signed, sig) = value.rsplit_once('.').ok_or(CookieError::Malformed)?;
    let parts: Vec<&str> = signed.split('.').collect();
    let [version, agency, secret, issued, kid] = parts[..] else {
        return Err(CookieError::Malformed);
    };
    if version != "v1" {
        return Err(CookieError::Version);
    }
    if !valid_label(agency) || !valid_label(kid) {
        return Err(CookieError::Malformed);
    }
    let secret = URL_SAFE_NO_PAD
        .decode(secret)
        .map_err(|_| CookieError::Malformed)?;
    if secret.len() != SESSION_SECRET_LEN {
        return Err(CookieError::Malformed);
    }
    if issued.is_empty() || issued.len() > 12 || !issued.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CookieError::Malformed);
    }
    let issued_s = issued.parse().map_err(|_| CookieError::Malformed)?;
    let signature = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| CookieError::Malformed)?;
    if signature.is_empty() {
        return Err(CookieError::Malformed);
    }
    Ok(SsoCookie {
        agency: agency.to_string(),
        secret,
        issued_s,
        kid: kid.to_string(),
        signed: signed.to_string(),
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let secret = [7u8; 32];
        let input = signing_input("agency-1", &secret, 1_700_000_000, "k1");
        let value = assemble(&input, &[1, 2, 3]);
        let c = parse(&value).unwrap();
        assert_eq!(c.agency, "agency-1");
        assert_eq!(c.secret, secret);
        assert_eq!(c.issued_s, 1_700_000_000);
        assert_eq!(c.kid, "k1");
        assert_eq!(c.signed, input);
        assert_eq!(c.signature, vec![1, 2, 3]);
    }

    #[test]
    fn cookie_names_match_exactly() {
        let find = |h: &'static str| exact_value([h.as_bytes()], CSRF_COOKIE);
        assert_eq!(find("__Host-baa_csrf=abc"), Some("abc"));
        assert_eq!(find("a=1; __Host-baa_csrf=abc; b=2"), Some("abc"));
        assert_eq!(find("a=1;__Host-baa_csrf=abc"), Some("abc"));
        for forged in [
            "%5F%5FHost-baa_csrf=abc",
            "\u{2000}__Host-baa_csrf=abc",
            "__Host-baa_csrf\u{2000}=abc",
            "__Host-baa_csrf =abc",
            "__host-baa_csrf=abc",
            "__Host-baa%5Fcsrf=abc",
            "x__Host-baa_csrf=abc",
        ] {
            assert_eq!(find(forged), None, "{forged:?}");
        }
        // Twice (one planted by a sibling host): ambiguous, so absent.
        assert_eq!(find("__Host-baa_csrf=a; __Host-baa_csrf=b"), None);
        let two = [
            "__Host-baa_csrf=a".as_bytes(),
            "__Host-baa_csrf=b".as_bytes(),
        ];
        assert_eq!(exact_value(two, CSRF_COOKIE), None);
    }

    #[test]
    fn refuses_malformed_values() {
        let secret = [7u8; 32];
        let good = assemble(&signing_input("a", &secret, 5, "k"), &[9]);
        assert!(parse(&good).is_ok());
        for bad in [
            "",
            "v1",
            "v1.a.b.c.d",
            &good.replace("v1.", "v2."),
            &assemble(&signing_input("a", &[7u8; 31], 5, "k"), &[9]),
            &assemble(&signing_input("a b", &secret, 5, "k"), &[9]),
            &assemble(&signing_input("a", &secret, 5, "k.x"), &[9]),
            &format!("{good}!"),
            &"x".repeat(MAX_COOKIE_LEN + 1),
            &good.replace(".5.", ".-5."),
            &format!("{}.", signing_input("a", &secret, 5, "k")),
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
