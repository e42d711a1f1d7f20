//! The agency's browser cookies (no cryptography here: the node signs and
//! verifies). Two cookies, so that what partner sites can read grants nothing:
//!
//! - the **session cookie** [`SESSION_COOKIE`], host-only on the agency's host
//!   (`__Host-`): the bearer, a 256-bit random secret (base64url) whose
//!   SHA-256 is the session's key;
//! - the **agency reference cookie** [`REFERENCE_COOKIE`], on the shared
//!   cookie domain: a compact JWS (EdDSA, key in the agency's JWKS) of
//!   [`Reference`] claims — the issuing agency's issuer URL, the session's
//!   public handle, issue and expiry times. Partner sites and peer agencies
//!   verify it and learn where the user is signed in; it is no credential.
//!
//! A browser is signed in only when both name the same live session.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Name of the session cookie (host-only bearer).
pub const SESSION_COOKIE: &str = "__Host-baa_session";
/// Name of the agency reference cookie (shared domain, signed, not a credential).
pub const REFERENCE_COOKIE: &str = "__Secure-baa_ref";
/// The JOSE `typ` of a reference, so no other JWT of the agency passes for one.
pub const REFERENCE_TYP: &str = "baa-ref+jwt";
/// Longest accepted cookie value.
pub const MAX_COOKIE_LEN: usize = 1024;
/// Bytes of randomness in a session secret.
pub const SESSION_SECRET_LEN: usize = 32;

/// The claims of an agency reference cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    /// Issuer URL of the agency where the session lives.
    pub iss: String,
    /// The session's public handle (`sid`, as in ID tokens).
    pub sid: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds (the session's absolute expiry).
    pub exp: u64,
}

/// The session cookie's value for `secret`.
pub fn session_value(secret: &[u8; SESSION_SECRET_LEN]) -> String {
    URL_SAFE_NO_PAD.encode(secret)
}

/// The secret in a session cookie's value, if it is well-formed.
pub fn parse_session(value: &str) -> Option<[u8; SESSION_SECRET_LEN]> {
    if value.len() != 43 {
        return None;
    }
    URL_SAFE_NO_PAD.decode(value).ok()?.try_into().ok()
}

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

/// Cookie a forward-auth app's host keeps while a browser is away at the
/// agency being signed in: a random nonce, host-only on the app's host, whose
/// SHA-256 the agency binds into the code it sends back (no code works in
/// another browser, so nobody can sign a victim into their own account).
pub const APP_STATE_COOKIE: &str = "__Host-baa_app_state";
/// The JOSE `typ` of the one-minute code that carries a session to an app.
pub const APP_CODE_TYP: &str = "baa-app-code+jwt";
/// The JOSE `typ` of a forward-auth app's session cookie value.
pub const APP_SESSION_TYP: &str = "baa-app+jwt";

/// Name of the session cookie of the forward-auth app `app` on its own host:
/// host-only, one per app, so apps sharing a host do not overwrite each other.
pub fn app_cookie_name(app: &str) -> String {
    format!("__Host-baa_app_{app}")
}

/// Claims of the code that carries a browser's agency session to a
/// forward-auth app's host (RS256, [`APP_CODE_TYP`], one minute).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppCode {
    /// The agency's issuer URL.
    pub iss: String,
    /// The app's name: the code opens nothing elsewhere.
    pub aud: String,
    /// The agency session's public handle.
    pub sid: String,
    /// SHA-256 (base64url) of the browser's [`APP_STATE_COOKIE`] nonce.
    pub state: String,
    /// Where to send the browser afterwards (checked to be under the app's origin).
    pub rd: String,
    /// Expires at, Unix seconds.
    pub exp: u64,
}

/// Claims of a forward-auth app's session cookie (RS256, [`APP_SESSION_TYP`]):
/// it names the agency session, which must still be alive for it to pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSession {
    /// The agency's issuer URL.
    pub iss: String,
    /// The app's name.
    pub aud: String,
    /// The agency session's public handle.
    pub sid: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds (the session's absolute expiry).
    pub exp: u64,
}

/// Checks a name used in configuration (agency name, key id).
pub fn valid_label(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_values_round_trip_and_refuse_garbage() {
        let secret = [7u8; SESSION_SECRET_LEN];
        let v = session_value(&secret);
        assert_eq!(parse_session(&v), Some(secret));
        for bad in [
            "",
            "x",
            &v[1..],
            &format!("{v}A"),
            &v.replace(&v[..1], "+"),
            &"é".repeat(22),
        ] {
            assert_eq!(parse_session(bad), None, "{bad:?}");
        }
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

    /// A plain reading of [`exact_value`]'s rule, to test it against.
    fn oracle<'a>(headers: &[&'a [u8]], name: &str) -> Option<&'a str> {
        let prefix = [name.as_bytes(), b"="].concat();
        let found: Vec<&[u8]> = headers
            .iter()
            .flat_map(|h| h.split(|&b| b == b';'))
            .map(|p| p.strip_prefix(b" ").unwrap_or(p))
            .filter_map(|p| p.strip_prefix(prefix.as_slice()))
            .collect();
        match found.as_slice() {
            [one] => Some(std::str::from_utf8(one).ok()?.trim_end_matches(' ')),
            _ => None,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn every_session_secret_round_trips(secret: [u8; SESSION_SECRET_LEN]) {
            proptest::prop_assert_eq!(parse_session(&session_value(&secret)), Some(secret));
        }

        #[test]
        fn a_parsed_session_value_formats_back_to_itself(s in "[A-Za-z0-9_=+/-]{40,46}|\\PC{0,50}") {
            if let Some(secret) = parse_session(&s) {
                proptest::prop_assert_eq!(session_value(&secret), s);
            }
        }

        #[test]
        fn exact_value_follows_its_rule(
            headers in proptest::collection::vec("(( ?(__Host-baa_csrf|a|__host-baa_csrf|x) ?=[ a-z\u{e9}]{0,4});?){0,4}", 0..3),
        ) {
            let headers: Vec<&[u8]> = headers.iter().map(|h| h.as_bytes()).collect();
            for name in [CSRF_COOKIE, "a"] {
                proptest::prop_assert_eq!(
                    exact_value(headers.iter().copied(), name),
                    oracle(&headers, name)
                );
            }
        }

        #[test]
        fn a_cookie_written_among_others_is_read_back(
            value in "[!#-+--:<-~]{0,40}",
            others in proptest::collection::vec("[a-z_]{1,8}", 0..4),
            at in 0usize..5,
        ) {
            let mut pairs: Vec<String> = others.iter().map(|o| format!("{o}=1")).collect();
            pairs.insert(at.min(pairs.len()), format!("{CSRF_COOKIE}={value}"));
            let header = pairs.join("; ");
            proptest::prop_assert_eq!(exact_value([header.as_bytes()], CSRF_COOKIE), Some(value.as_str()));
        }
    }
}
