//! Form and query decoding as the handlers do it (`web::Form` and
//! `web::Query` are serde_urlencoded) into the public request structs, and
//! the small parsers behind them:
//!
//! - decoding never panics; `ListQuery` round-trips exactly (decode,
//!   encode, decode gives the same value) and `AuthParams` (carried through
//!   the sign-in pages as hidden fields) re-encodes to a fixed point;
//! - `Page::parse` (limits, cursors, prefixes) never panics and accepts
//!   only limits 1..=1000;
//! - `baa login`'s loopback `parse_request` never panics and accepts only
//!   GET on `/callback` with no parameter repeated;
//! - `parse_kek` accepts only 32 bytes, and a key it reads reads back from
//!   its hex form.
#![no_main]

use baa_node::cli::{parse_loopback_request as parse_request, LoopbackTarget as Target};
use baa_node::kek::parse_kek;
use baa_node::sso::authorize::AuthParams;
use baa_node::sso::logout::LogoutParams;
use baa_node::sso::page::Page;
use baa_proto::api::ListQuery;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(q) = serde_urlencoded::from_str::<ListQuery>(s) {
        let encoded = serde_urlencoded::to_string(&q).expect("encodes");
        assert_eq!(
            serde_urlencoded::from_str::<ListQuery>(&encoded).ok(),
            Some(q.clone()),
            "{encoded}"
        );
        if Page::parse(&q).is_ok() {
            let limit = q.limit.unwrap_or(1);
            assert!((1..=1000).contains(&limit), "limit {limit} accepted");
        }
        let _ = Page::parse_without_prefix(&q);
    }
    if let Ok(p) = serde_urlencoded::from_str::<AuthParams>(s) {
        let once = serde_urlencoded::to_string(&p).expect("encodes");
        let back: AuthParams = serde_urlencoded::from_str(&once).expect("decodes");
        assert_eq!(serde_urlencoded::to_string(&back).expect("encodes"), once);
        let _ = p.safe_continue();
    }
    let _ = serde_urlencoded::from_str::<LogoutParams>(s);
    if let Ok(Target::Callback(_)) = parse_request(s) {
        let line = s.lines().next().unwrap_or("");
        assert!(line.starts_with("GET /callback"), "{line:?}");
    }
    if let Ok(kek) = parse_kek(s) {
        let hex: String = kek.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_kek(&hex).ok(), Some(kek));
    }
});
