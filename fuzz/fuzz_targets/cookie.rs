//! The session cookie's value and the `Cookie` header reader.
//!
//! - `parse_session` accepts exactly the values `session_value` writes:
//!   whatever it accepts formats back to the same string, and every secret
//!   round-trips;
//! - `exact_value` equals a plain oracle (split on `;`, one optional space,
//!   exact name, trailing spaces trimmed, absent when repeated or not UTF-8)
//!   and finds every value written into a header it formats;
//! - `valid_label` equals its definition.
#![no_main]

use baa_proto::cookie::{
    exact_value, parse_session, session_value, valid_label, CSRF_COOKIE, SESSION_COOKIE,
};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 3] = [SESSION_COOKIE, CSRF_COOKIE, "a"];

fn oracle<'a>(headers: &[&'a [u8]], name: &str) -> Option<&'a str> {
    let mut found = Vec::new();
    for h in headers {
        for pair in h.split(|&b| b == b';') {
            let pair = if pair.first() == Some(&b' ') {
                &pair[1..]
            } else {
                pair
            };
            let mut prefix = name.as_bytes().to_vec();
            prefix.push(b'=');
            if pair.starts_with(&prefix) {
                found.push(&pair[prefix.len()..]);
            }
        }
    }
    match found.as_slice() {
        [one] => {
            let v = std::str::from_utf8(one).ok()?;
            Some(v.trim_end_matches(' '))
        }
        _ => None,
    }
}

fn structured(u: &mut Unstructured) -> Result<()> {
    let secret: [u8; 32] = u.arbitrary()?;
    assert_eq!(parse_session(&session_value(&secret)), Some(secret));
    // A header made of cookies, the one looked for among them once.
    let name = NAMES[u.choose_index(NAMES.len())?];
    let value: String = u.arbitrary::<String>()?;
    let value: String = value.chars().filter(|c| *c != ';' && *c != ' ').collect();
    let mut pairs = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let other: String = u.arbitrary()?;
        let other: String = other
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if other.is_empty() || other == name {
            continue;
        }
        pairs.push(format!("{other}=x"));
    }
    let at = u.int_in_range(0..=pairs.len())?;
    pairs.insert(at, format!("{name}={value}"));
    let header = pairs.join("; ");
    assert_eq!(
        exact_value([header.as_bytes()], name),
        Some(value.as_str()),
        "{header:?}"
    );
    // Sent twice: refused.
    let twice = format!("{header}; {name}={value}");
    assert_eq!(exact_value([twice.as_bytes()], name), None);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(secret) = parse_session(s) {
            assert_eq!(session_value(&secret), s);
        }
        let label_ok = (1..=64).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        assert_eq!(valid_label(s), label_ok);
    }
    let headers: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    for name in NAMES {
        assert_eq!(
            exact_value(headers.iter().copied(), name),
            oracle(&headers, name)
        );
    }
    let _ = structured(&mut Unstructured::new(data));
});
