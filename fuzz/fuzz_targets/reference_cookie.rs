//! The agency reference cookie (a compact JWS of `Reference` claims,
//! EdDSA, `typ` baa-ref+jwt), read as `KeyRing::verify_reference_kid` and
//! `peer_sessions::claimed_issuer` read it:
//!
//! - arbitrary input never verifies under a fixed key (forging one takes
//!   the key), and reading its claimed issuer never panics;
//! - a reference built from the input, signed with the key, verifies to
//!   its claims and claims its issuer; with any one byte changed it never
//!   verifies, and under another issuer it never does.
#![no_main]

use baa_node::actors::peer_sessions::claimed_issuer;
use baa_node::keys::{decode_reference, ed25519_encoding_key, ed25519_public, reference_kid};
use baa_proto::cookie::{Reference, REFERENCE_TYP};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Header};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const SEED: [u8; 32] = [5; 32];
const ISSUER: &str = "https://agency.example";

fn decoding() -> DecodingKey {
    let public = ed25519_public(&SEED).expect("a key");
    DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(public)).expect("a key")
}

fn verify(value: &str, issuer: &str) -> Option<Reference> {
    reference_kid(value)?;
    decode_reference(value, issuer, &decoding())
}

fn structured(u: &mut Unstructured) -> Result<()> {
    let far = 4_000_000_000u64;
    let claims = Reference {
        iss: if u.arbitrary()? {
            ISSUER.to_string()
        } else {
            u.arbitrary()?
        },
        sid: u.arbitrary()?,
        iat: u.arbitrary()?,
        exp: far + u64::from(u.arbitrary::<u32>()?),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(REFERENCE_TYP.into());
    header.kid = Some("r1".into());
    let value =
        jsonwebtoken::encode(&header, &claims, &ed25519_encoding_key(&SEED)).expect("signs");
    assert_eq!(claimed_issuer(&value), Some(claims.iss.clone()));
    if value.len() > baa_proto::cookie::MAX_COOKIE_LEN {
        assert_eq!(verify(&value, &claims.iss), None);
        return Ok(());
    }
    assert_eq!(verify(&value, &claims.iss), Some(claims.clone()));
    if claims.iss != ISSUER {
        assert_eq!(verify(&value, ISSUER), None);
    }
    let at = u.choose_index(value.len())?;
    let by: u8 = u.int_in_range(1..=255)?;
    let mut altered = value.clone().into_bytes();
    altered[at] = altered[at].wrapping_add(by);
    if let Ok(altered) = String::from_utf8(altered) {
        assert_eq!(verify(&altered, &claims.iss), None, "byte {at} changed");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = claimed_issuer(s);
        assert_eq!(verify(s, ISSUER), None, "{s:?} verified");
    }
    let _ = structured(&mut Unstructured::new(data));
});
