//! Federation of agencies (issue 12): what an agency publishes about itself
//! (a self-signed entity configuration with federation keys of its own),
//! and peers added only against the pin of their federation key.

use std::time::Duration;

use baa_cluster_tests::federation::{directory_until, federation_pin, Federation};
use baa_cluster_tests::harness::{free_port, AGENCY_HOST, CONVERGE_DEADLINE};
use baa_cluster_tests::{poll_until, Cluster, ClusterOptions};
use baa_proto::api::{ErrorBody, PeerList};
use baa_proto::ErrorCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// The entity configuration of node `id` of `cluster`, once it has one.
async fn statement_of(cluster: &Cluster, id: u64) -> (String, String) {
    let http = cluster.http().clone();
    let url = format!("{}/.well-known/openid-federation", cluster.public_url(id));
    // The federation key is made when the cluster is initialised; a
    // follower shows it once it has applied that entry.
    poll_until(Duration::from_secs(60), "an entity configuration", || {
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
    .await
}

/// The token JWKS node 1 of `cluster` publishes (RSA token keys and the
/// Ed25519 keys of its reference cookies).
async fn token_jwks(cluster: &Cluster) -> Value {
    let url = format!("{}/.well-known/jwks.json", cluster.public_url(1));
    let resp = cluster.http().get(url).send().await.expect("the JWKS");
    resp.json().await.expect("JWKS JSON")
}

/// The payload of a JWT, read without checking anything (to find its keys).
fn payload(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).expect("a JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_publishes_one_self_signed_entity_configuration() {
    let cluster = Cluster::start(3).await;
    let mut statements = Vec::new();
    for id in cluster.ids() {
        let (kind, jwt) = statement_of(&cluster, id).await;
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
    let jwks = token_jwks(&cluster).await;
    let fed_x = payload(&statements[0])["jwks"]["keys"][0]["x"].clone();
    for k in jwks["keys"].as_array().unwrap() {
        assert_ne!(k["kid"].as_str(), Some(kids[0].as_str()), "{k}");
        assert_ne!(k["x"], fed_x, "{k}");
    }
    cluster.assert_no_panics();
}

/// The answer of an admin request: status and, for errors, the code.
async fn answer(rb: reqwest::RequestBuilder) -> (reqwest::StatusCode, Option<ErrorCode>, String) {
    let resp = rb.send().await.expect("an answer");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let code = serde_json::from_str::<ErrorBody>(&text)
        .ok()
        .map(|b| b.error);
    (status, code, text)
}

/// Acceptance 4, in part: a peer is added only when its entity
/// configuration is signed by the pinned key; nothing is stored otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_added_only_against_the_pin_of_its_federation_key() {
    let (a, b) = two_agencies().await;
    let (_, b_statement) = statement_of(&b, 1).await;
    let b_pin = jsonwebtoken::decode_header(&b_statement)
        .unwrap()
        .kid
        .unwrap();
    let (_, a_statement) = statement_of(&a, 1).await;
    let a_pin = jsonwebtoken::decode_header(&a_statement)
        .unwrap()
        .kid
        .unwrap();
    let peers_url = format!("{}/admin/v1/federation/peers", a.manage_url(1));
    let admin = |rb: reqwest::RequestBuilder| rb.bearer_auth(a.admin_token());
    let add = |issuer: &str, pin: &str| {
        admin(a.http().post(&peers_url)).json(&serde_json::json!({ "issuer": issuer, "pin": pin }))
    };

    // A pin that is not B's key (A's own): refused, nothing stored.
    let (status, code, text) = answer(add(&b.issuer(), &a_pin)).await;
    assert_eq!(
        (status.as_u16(), code),
        (400, Some(ErrorCode::PinMismatch)),
        "{text}"
    );
    // Nobody answers there: refused as unreachable.
    let nowhere = format!("https://{AGENCY_HOST}:{}", free_port());
    let (status, code, text) = answer(add(&nowhere, &b_pin)).await;
    assert_eq!(
        (status.as_u16(), code),
        (502, Some(ErrorCode::PeerUnreachable)),
        "{text}"
    );
    // Not an https issuer, or not a thumbprint: refused before any call.
    let (status, code, _) = answer(add("http://example.test", &b_pin)).await;
    assert_eq!(
        (status.as_u16(), code),
        (400, Some(ErrorCode::InvalidRequest))
    );
    let (status, code, _) = answer(add(&b.issuer(), "not-a-pin")).await;
    assert_eq!(
        (status.as_u16(), code),
        (400, Some(ErrorCode::InvalidRequest))
    );
    let list = |id: u64| {
        let url = format!("{}/admin/v1/federation/peers", a.manage_url(id));
        admin(a.http().get(url))
    };
    let peers: PeerList = list(1).send().await.unwrap().json().await.unwrap();
    assert!(peers.peers.is_empty(), "{peers:?}");

    // The right pin, through the CLI: B becomes a peer on every node of A.
    let issuer = b.issuer();
    a.cli(
        2,
        &["federation", "add", "--issuer", &issuer, "--pin", &b_pin],
    )
    .await
    .assert_success("baa federation add");
    for id in a.ids() {
        poll_until(CONVERGE_DEADLINE, "the peer on every node", || {
            let req = list(id);
            let (issuer, pin) = (issuer.clone(), b_pin.clone());
            async move {
                let peers: PeerList = req.send().await.ok()?.json().await.ok()?;
                peers
                    .peers
                    .iter()
                    .any(|p| p.issuer == issuer && p.pin == pin)
                    .then_some(())
            }
        })
        .await;
    }
    let out = a.cli(3, &["federation", "list"]).await;
    out.assert_success("baa federation list");
    assert!(
        out.stdout.contains(&issuer) && out.stdout.contains(&b_pin),
        "{}",
        out.stdout
    );
    // Twice: refused.
    let (status, code, _) = answer(add(&issuer, &b_pin)).await;
    assert_eq!((status.as_u16(), code), (409, Some(ErrorCode::PeerExists)));

    // Removed through the CLI; removing again is refused.
    a.cli(1, &["federation", "remove", "--issuer", &issuer])
        .await
        .assert_success("baa federation remove");
    let peers: PeerList = list(1).send().await.unwrap().json().await.unwrap();
    assert!(peers.peers.is_empty(), "{peers:?}");
    let remove = admin(a.http().delete(&peers_url)).query(&[("issuer", issuer.as_str())]);
    let (status, code, _) = answer(remove).await;
    assert_eq!(
        (status.as_u16(), code),
        (404, Some(ErrorCode::PeerNotFound))
    );
    a.assert_no_panics();
    b.assert_no_panics();
}

/// Two agencies, A with B's CA and a one-second refresh; B not yet a peer.
async fn two_agencies() -> (Cluster, Cluster) {
    let b = Cluster::start(3).await;
    let mut opts = ClusterOptions::default();
    opts.federation.insert(
        "ca_file".into(),
        b.ca_pem().to_string_lossy().into_owned().into(),
    );
    opts.federation.insert(
        "resolve".into(),
        toml::Value::Array(vec![format!("{AGENCY_HOST}=127.0.0.1").into()]),
    );
    opts.federation.insert("refresh_s".into(), 1.into());
    let a = Cluster::start_with(opts).await;
    (a, b)
}

/// The federation directory: every node of A holds B's configuration and
/// the keys of B's reference cookies; with B stopped it keeps the last good
/// copy and says B is unreachable; with B back, B is reachable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_keeps_peers_fresh_and_their_last_good_copy() {
    let (a, mut b) = two_agencies().await;
    let (_, b_statement) = statement_of(&b, 1).await;
    let pin = jsonwebtoken::decode_header(&b_statement)
        .unwrap()
        .kid
        .unwrap();
    let issuer = b.issuer();
    a.cli(
        1,
        &["federation", "add", "--issuer", &issuer, "--pin", &pin],
    )
    .await
    .assert_success("baa federation add");

    // B's reference-cookie keys, as B publishes them for its partner sites
    // (beside its Ed25519 ID-token key, which is not one).
    let jwks = token_jwks(&b).await;
    let mut b_refs: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kty"] == "OKP")
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .filter(|kid| kid.starts_with("ref-"))
        .collect();
    b_refs.sort();
    assert!(!b_refs.is_empty());
    let kids = |peer: &Value, field: &str| -> Vec<String> {
        let mut v: Vec<String> = peer[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k["kid"].as_str().or(k.as_str()).map(String::from))
            .collect();
        v.sort();
        v
    };
    for id in a.ids() {
        let peer = directory_until(&a, id, &issuer, "B fetched on every node of A", |p| {
            p["reachable"] == true
        })
        .await;
        assert_eq!(kids(&peer, "reference_keys"), b_refs, "node {id}: {peer}");
        assert!(
            kids(&peer, "federation_keys").contains(&pin),
            "node {id}: {peer}"
        );
    }
    let reachable = format!("baa_federation_peer_reachable{{peer=\"{issuer}\"}}");
    assert_eq!(a.metric(1, &reachable).await, Some(1.0));

    // B stopped entirely: unreachable, the last good copy kept.
    for id in b.ids() {
        b.stop(id).await;
    }
    let peer = directory_until(&a, 1, &issuer, "B unreachable", |p| p["reachable"] == false).await;
    assert!(peer["last_error"].is_string(), "{peer}");
    assert_eq!(
        kids(&peer, "reference_keys"),
        b_refs,
        "the last good copy: {peer}"
    );
    assert_eq!(a.metric(1, &reachable).await, Some(0.0));

    // B back: reachable again.
    for id in b.ids() {
        b.restart(id).await;
    }
    directory_until(&a, 1, &issuer, "B reachable again", |p| {
        p["reachable"] == true
    })
    .await;
    a.assert_no_panics();
    b.assert_no_panics();
}

/// B rotates its federation key: the new key is published at once while
/// the old one keeps signing for the overlap, so A sees it in a statement
/// it trusts; after the overlap B signs with the new key, A follows and
/// re-pins B to it — which holds across a restart of every node of A (the
/// old pin alone would refuse B now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_follows_a_federation_key_rotation_across_restarts() {
    let mut fed = Federation::start(|_| {}).await;
    let (a, b_issuer) = (&fed.a, fed.b.issuer());
    let old = federation_pin(&fed.b).await;
    fed.b
        .cli(1, &["federation", "rotate-key", "--overlap-s", "6"])
        .await
        .assert_success("baa federation rotate-key");
    let key: Value = fed
        .b
        .http()
        .get(format!("{}/admin/v1/federation/key", fed.b.manage_url(1)))
        .bearer_auth(fed.b.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(key["pin"], old.as_str(), "{key}");
    let new = key["next"].as_str().expect("the next key").to_string();
    assert_ne!(new, old);

    // During the overlap: B's statement is signed by the old key and lists
    // the new one; every node of A holds it.
    let (_, jwt) = statement_of(&fed.b, 1).await;
    assert_eq!(
        jsonwebtoken::decode_header(&jwt).unwrap().kid.as_deref(),
        Some(old.as_str())
    );
    let listed: Vec<String> = payload(&jwt)["jwks"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    assert!(listed.contains(&new), "{listed:?}");
    for id in a.ids() {
        directory_until(a, id, &b_issuer, "B's next key at A", |p| {
            p["federation_keys"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == new.as_str()))
        })
        .await;
    }

    // After the overlap B signs with the new key; A re-pins B to it.
    poll_until(CONVERGE_DEADLINE, "B signing with its new key", || async {
        let (_, jwt) = statement_of(&fed.b, 1).await;
        (jsonwebtoken::decode_header(&jwt).ok()?.kid? == new).then_some(())
    })
    .await;
    let peers_url = format!("{}/admin/v1/federation/peers", a.manage_url(1));
    poll_until(CONVERGE_DEADLINE, "A pinning B's new key", || async {
        let list: PeerList = a
            .http()
            .get(&peers_url)
            .bearer_auth(a.admin_token())
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        list.peers
            .iter()
            .any(|p| p.issuer == b_issuer && p.pin == new)
            .then_some(())
    })
    .await;

    // Every node of A restarted: only the stored pin is trusted now, and
    // it is B's new key.
    for id in fed.a.ids() {
        fed.a.stop(id).await;
    }
    for id in fed.a.ids() {
        fed.a.restart(id).await;
    }
    let a = &fed.a;
    for id in a.ids() {
        directory_until(a, id, &b_issuer, "B reachable after A's restart", |p| {
            p["reachable"] == true
        })
        .await;
    }
    a.assert_no_panics();
    fed.b.assert_no_panics();
}
