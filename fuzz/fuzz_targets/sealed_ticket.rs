//! Sealed login tickets (`t1.<kid>.<nonce ‖ ciphertext ‖ tag>`), opened
//! with one fixed key as `TicketSealer` opens them:
//!
//! - arbitrary input never opens (forging one takes the key);
//! - a ticket built from the input seals and opens whole, never as an
//!   access token, and with any one byte changed, or cut short, it never
//!   opens.
#![no_main]

use baa_node::sealing::FixedTicketKey;
use baa_proto::sso::SealedTicket;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn key() -> FixedTicketKey {
    FixedTicketKey::new("k1", &[1; 32]).expect("a key")
}

fn ticket(u: &mut Unstructured) -> Result<SealedTicket> {
    Ok(SealedTicket {
        id: u.arbitrary()?,
        session_key: u.arbitrary()?,
        client_id: u.arbitrary()?,
        redirect_uri: u.arbitrary()?,
        nonce: u.arbitrary()?,
        code_challenge: u.arbitrary()?,
        scopes: u.arbitrary()?,
        issued_ms: u.arbitrary()?,
        expires_ms: u.arbitrary()?,
    })
}

fn structured(key: &FixedTicketKey, u: &mut Unstructured) -> Result<()> {
    let t = ticket(u)?;
    let Ok(sealed) = key.seal(&t) else {
        return Ok(()); // over the size limit
    };
    assert_eq!(key.open(&sealed), Some(t));
    assert_eq!(key.open_access(&sealed), None);
    let at = u.choose_index(sealed.len())?;
    let by: u8 = u.int_in_range(1..=255)?;
    let mut altered = sealed.clone().into_bytes();
    altered[at] = altered[at].wrapping_add(by);
    if let Ok(altered) = String::from_utf8(altered) {
        assert_eq!(key.open(&altered), None, "byte {at} changed");
    }
    let cut = u.choose_index(sealed.len())?;
    assert_eq!(key.open(&sealed[..cut]), None, "cut at {cut}");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let key = key();
    if let Ok(s) = std::str::from_utf8(data) {
        assert_eq!(key.open(s), None, "{s:?} opened");
        assert_eq!(key.open_access(s), None);
    }
    let _ = structured(&key, &mut Unstructured::new(data));
});
