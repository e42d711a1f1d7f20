//! Federation of agencies (issue 12), what an agency publishes about itself:
//! a self-signed entity configuration with federation keys of its own.

use std::time::Duration;

use baa_cluster_tests::{poll_until, Cluster};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// The payload of a JWT, read without checking anything (to find its keys).
fn payload(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).expect("a JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_publishes_one_self_signed_entity_configuration() {
    let cluster = Cluster::start(3).await;
    let http = cluster.http().clone();
    let mut statements = Vec::new();
    for id in cluster.ids() {
        let url = format!("{}/.well-known/openid-federation", cluster.public_url(id));
        // The federation key is made when the cluster is initialised; a
        // follower shows it once it has applied that entry.
        let (kind, jwt) = poll_until(Duration::from_secs(60), "an entity configuration", || {
            let req = http.get(&url);
            async move {
                let resp = req.send().await.ok()?;
                if !resp.status().is_success() {
                    return None;
                }
                let kind = resp
                    .headers()
                    .get("content-type")?
                    .to_str()
                    .ok()?
                    .to_string();
                Some((kind, resp.text().await.ok()?))
            }
        })
        .await;
        assert_eq!(kind, "application/entity-statement+jwt", "node {id}");
        statements.push(jwt);
    }

    for jwt in &statements {
        let header = jsonwebtoken::decode_header(jwt).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.typ.as_deref(), Some("entity-statement+jwt"));
        let kid = header.kid.clone().expect("a kid");
        // Self-signed: the key the header names is in the statement's own
        // JWKS, its kid is its RFC 7638 thumbprint (what a peer pins), and
        // the signature verifies with it.
        let unverified = payload(jwt);
        let jwk = unverified["jwks"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .expect("the signing key among the published ones")
            .clone();
        assert_eq!(
            (jwk["kty"].as_str(), jwk["crv"].as_str()),
            (Some("OKP"), Some("Ed25519"))
        );
        let x = jwk["x"].as_str().unwrap();
        let public = URL_SAFE_NO_PAD.decode(x).unwrap();
        assert_eq!(kid, baa_proto::federation::ed25519_thumbprint(&public));
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[cluster.issuer()]);
        v.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
        let claims =
            jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_ed_components(x).unwrap(), &v)
                .expect("the statement verifies with its own key")
                .claims;
        assert_eq!(claims["sub"], cluster.issuer().as_str());
        let validity = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert_eq!(validity, 24 * 3600);
        let op = &claims["metadata"]["openid_provider"];
        assert_eq!(op["issuer"], cluster.issuer().as_str());
        assert_eq!(
            op["token_endpoint"],
            format!("{}/sso/token", cluster.issuer())
        );
        assert_eq!(
            claims["metadata"]["baa_agency"]["session_status_endpoint"],
            format!("{}/sso/session_status", cluster.issuer())
        );
    }
    // One agency, one federation key: every node signs with the same one.
    let kids: Vec<String> = statements
        .iter()
        .map(|j| jsonwebtoken::decode_header(j).unwrap().kid.unwrap())
        .collect();
    assert!(kids.windows(2).all(|w| w[0] == w[1]), "{kids:?}");

    // The federation key is not a token key: the token JWKS does not have it.
    let jwks: Value = http
        .get(format!("{}/.well-known/jwks.json", cluster.public_url(1)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fed_x = payload(&statements[0])["jwks"]["keys"][0]["x"].clone();
    for k in jwks["keys"].as_array().unwrap() {
        assert_ne!(k["kid"].as_str(), Some(kids[0].as_str()), "{k}");
        assert_ne!(k["x"], fed_x, "{k}");
    }
    cluster.assert_no_panics();
}
