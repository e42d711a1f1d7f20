//! The attack suite across two federated agencies (issue 15): what an
//! attacker signed in at B, or holding nothing but B's public keys, can try
//! against A's end of the silent round trip and of the back-channel logout.
//! Each test names the clause or CVE it comes from.

use baa_cluster_tests::bench::{client_for, csrf_pair, set_cookie};
use baa_cluster_tests::federation::{deliver, round_trip, Answered, Federation, HOST_B};
use baa_cluster_tests::harness::CONVERGE_DEADLINE;
use baa_cluster_tests::poll_until;
use baa_cluster_tests::sso::{
    query_mode_request, verified_user, Agent, REFERENCE_COOKIE, SESSION_COOKIE,
};
use baa_proto::api::CreateUserRequest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery";
const SITE: &str = "shop";
const REDIRECT: &str = "https://shop.baa.localtest/cb";

/// Two peered agencies with `mallory` and `victor` at B and the site
/// `shop` at A.
async fn federation() -> Federation {
    let fed = Federation::start(|_| {}).await;
    for name in ["mallory", "victor"] {
        let req = CreateUserRequest {
            username: name.into(),
            password: Some(PASSWORD.into()),
            ..Default::default()
        };
        fed.b
            .admin(1)
            .create_user(&req, None)
            .await
            .unwrap_or_else(|e| panic!("creating {name} at B: {e}"));
    }
    let site = json!({
        "client_id": SITE,
        "redirect_uris": [REDIRECT],
        "allowed_scopes": ["openid"],
    });
    fed.a.admin(1).create_site(&site).await.expect("shop at A");
    fed
}

/// A browser of `user` signed in at B (its own cookies, a CSRF pair at A):
/// a fresh round trip from A's `shop`, answered by B, not yet delivered;
/// and the browser's agent at B (for signing out there).
async fn answered_for(fed: &Federation, http: &reqwest::Client, user: &str) -> (Answered, Agent) {
    let (a, b) = (fed.a.public_url(1), fed.b.public_url(1));
    let mut at_b = Agent::new(&fed.b);
    at_b.sign_in_ok(&b, user, PASSWORD).await;
    let b_cookies = at_b.sso_cookies().expect("B's cookies").header();
    let csrf = csrf_pair(http, &a).await.expect("CSRF at A");
    let query = query_mode_request(SITE, REDIRECT).0;
    let answered = round_trip(http, &a, &b, &b_cookies, &csrf, &query)
        .await
        .unwrap_or_else(|e| panic!("{user}'s round trip: {e:#}"));
    (answered, at_b)
}

/// Delivers `fields` with `trip`, expecting a refusal that starts no
/// session: an error status, no session cookie.
async fn assert_refused(
    http: &reqwest::Client,
    what: &str,
    callback: &str,
    trip: Option<&str>,
    fields: &[(String, String)],
) {
    let resp = deliver(http, callback, trip, fields)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let status = resp.status();
    let session = set_cookie(&resp, SESSION_COOKIE);
    println!("{what}: HTTP {status}");
    assert!(
        status.is_client_error(),
        "{what}: HTTP {status}, not refused"
    );
    assert!(session.is_none(), "{what}: a session cookie was set");
}

/// Delivers `answered` as its own browser does: the derived session's
/// cookies at A.
async fn delivered(http: &reqwest::Client, answered: &Answered) -> String {
    let resp = deliver(
        http,
        &answered.callback,
        Some(&answered.trip),
        &answered.fields,
    )
    .await
    .expect("delivering the answer");
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "A's callback");
    let session = set_cookie(&resp, SESSION_COOKIE).expect("a session at A");
    format!(
        "{SESSION_COOKIE}={session}; {REFERENCE_COOKIE}={}",
        answered.reference
    )
}

/// RFC 9700 §4.5 (authorization code injection), §4.7 (CSRF: the answer
/// bound to the browser that asked), §2.1.1 (a code used once); OpenID
/// Connect Core §3.1.2.7 (state). Mallory, signed in at B, gets B's
/// answer for her own round trip and tries to plant it: in Victor's
/// browser (with his round trip's cookie), in a browser that started none,
/// her code under Victor's own answer; then she replays her answer after
/// using it. Each is refused at A with no session and no write; Victor's
/// own answer still signs him in as himself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_s_answer_signs_in_once_and_only_the_browser_that_asked() {
    let fed = federation().await;
    let http = client_for(&fed.ca_bundle()).expect("client");
    let (mallory, _) = answered_for(&fed, &http, "mallory").await;
    let (victor, _) = answered_for(&fed, &http, "victor").await;
    let before = fed.a.last_log_index().await;

    assert_refused(
        &http,
        "Mallory's answer in Victor's browser",
        &mallory.callback,
        Some(&victor.trip),
        &mallory.fields,
    )
    .await;
    assert_refused(
        &http,
        "Mallory's answer in a browser that started no round trip",
        &mallory.callback,
        None,
        &mallory.fields,
    )
    .await;
    let (spare, _) = answered_for(&fed, &http, "mallory").await;
    let code_of = |a: &Answered| {
        a.fields
            .iter()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.clone())
            .expect("a code in B's answer")
    };
    let swapped: Vec<(String, String)> = victor
        .fields
        .iter()
        .map(|(k, v)| match k.as_str() {
            "code" => (k.clone(), code_of(&spare)),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    assert_refused(
        &http,
        "Mallory's code under Victor's state, in Victor's browser",
        &victor.callback,
        Some(&victor.trip),
        &swapped,
    )
    .await;
    let grew = fed.a.last_log_index().await - before;
    assert_eq!(grew, 0, "refused answers wrote {grew} entries at A");

    let mallory_at_a = delivered(&http, &mallory).await;
    assert_eq!(
        verified_user(&fed.a, 1, &mallory_at_a).await.as_deref(),
        Some("mallory.login-b")
    );
    let before = fed.a.last_log_index().await;
    assert_refused(
        &http,
        "Mallory's answer replayed after its use",
        &mallory.callback,
        Some(&mallory.trip),
        &mallory.fields,
    )
    .await;
    let grew = fed.a.last_log_index().await - before;
    assert_eq!(grew, 0, "the replay wrote {grew} entries at A");

    // The attempts spent nothing of Victor's: his own answer signs him in,
    // as himself.
    let victor_at_a = delivered(&http, &victor).await;
    assert_eq!(
        verified_user(&fed.a, 1, &victor_at_a).await.as_deref(),
        Some("victor.login-b")
    );
    fed.a.assert_no_panics();
    fed.b.assert_no_panics();
}

/// The payload of a compact JWS, decoded.
fn payload(jws: &str) -> Value {
    let part = jws.split('.').nth(1).expect("a JWS payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

/// A logout token's claims for A, naming B's session `sid`, as issuer
/// `iss`.
fn logout_claims(iss: &str, audience: &str, sid: &str) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "iss": iss,
        "aud": audience,
        "iat": now,
        "exp": now + 120,
        "jti": format!("forged-{now}"),
        "sid": sid,
        "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
    })
}

/// OpenID Connect Back-Channel Logout 1.0 §2.6 (the logout token verified
/// as an ID token is: signature by the issuer's published key, `alg` as
/// expected); RFC 8725 §2.1 and §3.1 (`alg` none, algorithm confusion);
/// CVE-2015-9235 and CVE-2016-10555 (an RSA public key taken as an HMAC
/// secret). Logout tokens for Victor's session, forged by someone who has
/// only B's public keys, are refused at A with a code, and end nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_peer_logout_tokens_end_nothing() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use rsa::pkcs1::EncodeRsaPrivateKey;

    let fed = federation().await;
    let http = client_for(&fed.ca_bundle()).expect("client");
    let (victor, mut at_b) = answered_for(&fed, &http, "victor").await;
    let at_a = delivered(&http, &victor).await;
    let reference = payload(&victor.reference);
    let (iss, sid) = (
        reference["iss"].as_str().expect("iss").to_string(),
        reference["sid"].as_str().expect("sid").to_string(),
    );
    // What B's logout tokens for A are addressed to: A's client id at B.
    let audience = baa_proto::federation::peer_client_id(&fed.a.issuer());
    let jwks: Value = fed
        .b
        .http()
        .get(format!("{}/.well-known/jwks.json", fed.b.public_url(1)))
        .send()
        .await
        .expect("B's keys")
        .json()
        .await
        .expect("B's keys as JSON");
    let key = &jwks["keys"][0];
    let kid = key["kid"].as_str().expect("kid").to_string();
    let n = key["n"].as_str().expect("an RSA key").to_string();
    let claims = logout_claims(&iss, &audience, &sid);
    let typed = |alg| {
        let mut h = Header::new(alg);
        h.typ = Some("logout+jwt".into());
        h.kid = Some(kid.clone());
        h
    };

    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD
            .encode(json!({ "alg": "none", "typ": "logout+jwt", "kid": kid }).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let hmac = encode(
        &typed(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(n.as_bytes()),
    )
    .expect("HS256");
    let own = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("an RSA key");
    let der = own.to_pkcs1_der().expect("PKCS#1 DER");
    let rsa_key = EncodingKey::from_rsa_der(der.as_bytes());
    let wrong_key = encode(&typed(Algorithm::RS256), &claims, &rsa_key).expect("RS256");
    let stranger = encode(
        &typed(Algorithm::RS256),
        &logout_claims(&format!("https://{HOST_B}.evil.test"), &audience, &sid),
        &rsa_key,
    )
    .expect("RS256");
    let mut untyped = typed(Algorithm::RS256);
    untyped.typ = Some("JWT".into());
    let not_logout = encode(&untyped, &claims, &rsa_key).expect("RS256");

    let before = fed.a.last_log_index().await;
    for (what, token) in [
        ("alg none", none.as_str()),
        ("HS256 keyed with B's RSA modulus", hmac.as_str()),
        (
            "RS256 by a key B never published, under B's kid",
            wrong_key.as_str(),
        ),
        ("an issuer A does not federate with", stranger.as_str()),
        ("typ JWT, not logout+jwt", not_logout.as_str()),
        ("not a JWT", "a.b.c"),
    ] {
        for id in fed.a.ids() {
            let resp = fed
                .a
                .http()
                .post(format!(
                    "{}/federation/backchannel-logout",
                    fed.a.public_url(id)
                ))
                .form(&[("logout_token", token)])
                .send()
                .await
                .expect("back-channel logout");
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or_default();
            println!("{what} on node {id}: HTTP {status} {}", body["error"]);
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{what} on node {id}: {body}"
            );
            assert!(body["error"].is_string(), "{what}: no code in {body}");
        }
    }
    let grew = fed.a.last_log_index().await - before;
    assert_eq!(grew, 0, "forged logout tokens wrote {grew} entries at A");
    for id in fed.a.ids() {
        poll_until(
            CONVERGE_DEADLINE,
            &format!("Victor's session at A still live on node {id}"),
            || async {
                verified_user(&fed.a, id, &at_a)
                    .await
                    .filter(|u| u == "victor.login-b")
            },
        )
        .await;
    }
    // The control: Victor signing out at B, whose genuine logout token
    // reaches A, ends the session at A on every node.
    let url = format!("{}/sso/logout", fed.b.public_url(1));
    let page = at_b.get(&url).await;
    let fields: Vec<(String, String)> = page.inputs().into_iter().collect();
    let out = at_b.post_form(&url, &fields).await;
    assert_eq!(out.status, StatusCode::OK, "signing out at B: {}", out.body);
    for id in fed.a.ids() {
        poll_until(
            CONVERGE_DEADLINE,
            &format!("Victor's session at A ended on node {id} by B's logout"),
            || async {
                verified_user(&fed.a, id, &at_a)
                    .await
                    .is_none()
                    .then_some(())
            },
        )
        .await;
    }
    fed.a.assert_no_panics();
    fed.b.assert_no_panics();
}
