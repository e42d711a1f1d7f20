//! Redirect-URI matching, differential: `redirect_matches(registered,
//! candidate)` equals a plain oracle — the two strings are equal, or both
//! are loopback URIs (`http://127.0.0.1` or `http://[::1]`, then an
//! optional `:digits` port, then nothing, a path or a query) that differ
//! only in their port (RFC 8252 §7.3) and the candidate holds no `@`, `#`
//! or `\`. Input: the registered URI, a newline, the candidate.
#![no_main]

use baa_node::sso::authorize::redirect_matches;
use libfuzzer_sys::fuzz_target;

/// The host and what follows the port, if `u` is a loopback URI.
fn loopback(u: &str) -> Option<(&str, &str)> {
    let rest = u.strip_prefix("http://")?;
    let (host, after) = if let Some(r) = rest.strip_prefix("127.0.0.1") {
        ("127.0.0.1", r)
    } else if let Some(r) = rest.strip_prefix("[::1]") {
        ("[::1]", r)
    } else {
        return None;
    };
    let after = match after.strip_prefix(':') {
        Some(p) => {
            let digits = p.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            &p[digits..]
        }
        None => after,
    };
    (after.is_empty() || after.starts_with('/') || after.starts_with('?')).then_some((host, after))
}

fn oracle(registered: &str, candidate: &str) -> bool {
    registered == candidate
        || (!candidate.contains(['@', '#', '\\'])
            && matches!((loopback(registered), loopback(candidate)), (Some(r), Some(c)) if r == c))
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (registered, candidate) = s.split_once('\n').unwrap_or((s, s));
    assert_eq!(
        redirect_matches(registered, candidate),
        oracle(registered, candidate),
        "registered {registered:?}, candidate {candidate:?}"
    );
    // A registered loopback URI is matched by itself on any port.
    if let Some((host, rest)) = loopback(registered) {
        let port = data.len() % 70_000;
        let with_port = format!("http://{host}:{port}{rest}");
        if !with_port.contains(['@', '#', '\\']) {
            assert!(redirect_matches(registered, &with_port), "{with_port}");
        }
    }
});
