//! Two federated agencies as a test fixture: agency A at
//! `login-a.baa.localtest` and agency B at `login-b.baa.localtest`, each its
//! own cluster with its own CA, on the one shared cookie domain, each
//! trusting the other's web CA and peered both ways against the pin of the
//! other's federation key.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use reqwest::header::{COOKIE, LOCATION};
use reqwest::StatusCode;
use serde_json::Value;

use crate::bench::{set_cookie, unexpected};
use crate::harness::{ClusterOptions, CONVERGE_DEADLINE};
use crate::sso::{CSRF_COOKIE, REFERENCE_COOKIE, SESSION_COOKIE};
use crate::{poll_until, Cluster};
use baa_proto::federation::ROUND_TRIP_COOKIE;

/// Agency A's host name.
pub const HOST_A: &str = "login-a.baa.localtest";
/// Agency B's host name.
pub const HOST_B: &str = "login-b.baa.localtest";
/// Agency A's name.
pub const NAME_A: &str = "agency-a";
/// Agency B's name.
pub const NAME_B: &str = "agency-b";

/// Two agencies peered both ways. Dropped in field order: A, B, then the
/// shared CA bundle.
pub struct Federation {
    /// Agency A.
    pub a: Cluster,
    /// Agency B.
    pub b: Cluster,
    _dir: tempfile::TempDir,
}

/// The entity configuration node `id` of `cluster` publishes, once it has one.
pub async fn entity_statement(cluster: &Cluster, id: u64) -> String {
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
            resp.text().await.ok()
        }
    })
    .await
}

/// The pin of `cluster`'s federation key: the `kid` its statement is signed with.
pub async fn federation_pin(cluster: &Cluster) -> String {
    use base64::Engine;
    let jwt = entity_statement(cluster, 1).await;
    let header = jwt.split('.').next().expect("a JWS header");
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("base64url");
    let header: Value = serde_json::from_slice(&header).expect("JSON");
    header["kid"].as_str().expect("a kid").to_string()
}

/// What node `id` of `cluster`'s directory holds of peer `issuer`, once
/// `ok` says so.
pub async fn directory_until(
    cluster: &Cluster,
    id: u64,
    issuer: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let url = format!("{}/admin/v1/federation/directory", cluster.manage_url(id));
    poll_until(CONVERGE_DEADLINE, what, || {
        let req = cluster.http().get(&url).bearer_auth(cluster.admin_token());
        let ok = &ok;
        async move {
            let v: Value = req.send().await.ok()?.json().await.ok()?;
            let peer = v["peers"]
                .as_array()?
                .iter()
                .find(|p| p["issuer"] == issuer)?
                .clone();
            ok(&peer).then_some(peer)
        }
    })
    .await
}

/// `peer` as a peer of `cluster` (`baa federation add` against its pin),
/// known and reachable on every node of `cluster`.
pub async fn add_peer(cluster: &Cluster, peer: &Cluster) {
    let pin = federation_pin(peer).await;
    let issuer = peer.issuer();
    cluster
        .cli(
            1,
            &["federation", "add", "--issuer", &issuer, "--pin", &pin],
        )
        .await
        .assert_success("baa federation add");
    for id in cluster.ids() {
        directory_until(cluster, id, &issuer, "the peer in the directory", |p| {
            p["reachable"] == true
        })
        .await;
    }
}

impl Federation {
    /// Both agencies' web CAs in one PEM file (what each trusts for the other).
    pub fn ca_bundle(&self) -> std::path::PathBuf {
        self._dir.path().join("peer-cas.pem")
    }

    /// Starts A and B (3 nodes each; `tune` adjusts both agencies'
    /// options), makes each trust the other's CA, and peers them both ways.
    pub async fn start(tune: impl Fn(&mut ClusterOptions)) -> Federation {
        let dir = tempfile::Builder::new()
            .prefix("baa-federation-")
            .tempdir()
            .expect("tempdir");
        let bundle = dir.path().join("peer-cas.pem");
        let options = |host: &str, name: &str| {
            let mut o = ClusterOptions {
                host: host.into(),
                ..Default::default()
            };
            o.sso.insert("agency".into(), name.into());
            let f = &mut o.federation;
            f.insert(
                "ca_file".into(),
                bundle.to_string_lossy().into_owned().into(),
            );
            f.insert(
                "resolve".into(),
                toml::Value::Array(vec![
                    format!("{HOST_A}=127.0.0.1").into(),
                    format!("{HOST_B}=127.0.0.1").into(),
                ]),
            );
            f.insert("refresh_s".into(), 1.into());
            tune(&mut o);
            o
        };
        let b = Cluster::start_with(options(HOST_B, NAME_B)).await;
        let a = Cluster::start_with(options(HOST_A, NAME_A)).await;
        // The peer client reads the bundle when first needed: after this.
        let mut pem = std::fs::read(a.ca_pem()).expect("A's CA");
        pem.extend(std::fs::read(b.ca_pem()).expect("B's CA"));
        std::fs::write(&bundle, pem).expect("writing the CA bundle");
        add_peer(&a, &b).await;
        add_peer(&b, &a).await;
        Federation { a, b, _dir: dir }
    }
}

/// `url` with its origin replaced by `base` (agents know no host names).
pub fn at(base: &str, url: &str) -> anyhow::Result<String> {
    let u = url::Url::parse(url).with_context(|| url.to_string())?;
    Ok(format!(
        "{base}{}",
        &url[u.origin().ascii_serialization().len()..]
    ))
}

/// The trust page's approval of the authorization request `query`.
pub fn approval(query: &str, csrf: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut form: Vec<(String, String)> = serde_urlencoded::from_str(query)?;
    for (k, v) in [
        ("csrf", csrf),
        ("decision", "approve"),
        ("account_name", "username"),
    ] {
        form.push((k.into(), v.into()));
    }
    Ok(form)
}

/// Timings of one client's first cross-agency login: until A has a
/// session, and until the site has its ticket (A's trust page approved).
pub struct FirstLogin {
    /// Until A has a session.
    pub session: Duration,
    /// Until the site has its ticket.
    pub ticket: Duration,
}

/// A round trip A started and B answered, not yet delivered to A.
pub struct Answered {
    /// The round-trip cookie A set in the browser.
    pub trip: String,
    /// A's callback, on A's base URL.
    pub callback: String,
    /// B's answer: the fields its page posts to the callback.
    pub fields: Vec<(String, String)>,
    /// B's reference cookie, which sent A to B.
    pub reference: String,
}

/// The start of a cross-agency login of a browser with B's cookies
/// `b_cookies` (and a CSRF pair at A), for the authorization request
/// `query` of a site of A: A → B (silent) → B's answer, not yet posted.
pub async fn round_trip(
    http: &reqwest::Client,
    a: &str,
    b: &str,
    b_cookies: &str,
    csrf: &str,
    query: &str,
) -> anyhow::Result<Answered> {
    let reference = b_cookies
        .split("; ")
        .find_map(|c| c.strip_prefix(&format!("{REFERENCE_COOKIE}=")))
        .ok_or_else(|| anyhow!("no reference in B's cookies"))?
        .to_string();
    let resp = http
        .get(format!("{a}/sso/authorize?{query}"))
        .header(
            COOKIE,
            format!("{CSRF_COOKIE}={csrf}; {REFERENCE_COOKIE}={reference}"),
        )
        .send()
        .await?;
    let trip =
        set_cookie(&resp, ROUND_TRIP_COOKIE).ok_or_else(|| anyhow!("A started no round trip"))?;
    let to_b = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let to_b = to_b.ok_or_else(|| anyhow!("A sent the browser nowhere"))?;
    let resp = http
        .get(at(b, &to_b)?)
        .header(COOKIE, b_cookies)
        .send()
        .await?;
    if resp.status() != StatusCode::OK {
        bail!(unexpected("B's authorize", resp).await);
    }
    let page = resp.text().await?;
    let fields: Vec<(String, String)> = crate::sso::inputs(&page).into_iter().collect();
    let action = crate::sso::form_action(&page).ok_or_else(|| anyhow!("no form from B"))?;
    Ok(Answered {
        trip,
        callback: at(a, &action)?,
        fields,
        reference,
    })
}

/// Posts B's answer `fields` to A's `callback` with round-trip cookie
/// `trip` (none: as a browser that never started one).
pub async fn deliver(
    http: &reqwest::Client,
    callback: &str,
    trip: Option<&str>,
    fields: &[(String, String)],
) -> anyhow::Result<reqwest::Response> {
    let mut req = http.post(callback).form(fields);
    if let Some(trip) = trip {
        req = req.header(COOKIE, format!("{ROUND_TRIP_COOKIE}={trip}"));
    }
    Ok(req.send().await?)
}

/// The first cross-agency login of a browser with B's cookies `b_cookies`
/// (and a CSRF pair at A): A → B (silent) → A's callback → A's trust page →
/// approval → ticket, for the authorization request `query` (a site of
/// A, response mode `query`). Answers the derived session's `Cookie` value.
pub async fn first_login(
    http: &reqwest::Client,
    a: &str,
    b: &str,
    b_cookies: &str,
    csrf: &str,
    query: &str,
) -> anyhow::Result<(String, FirstLogin)> {
    let started = Instant::now();
    let answered = round_trip(http, a, b, b_cookies, csrf, query).await?;
    let reference = answered.reference.clone();
    let resp = deliver(
        http,
        &answered.callback,
        Some(&answered.trip),
        &answered.fields,
    )
    .await?;
    if resp.status() != StatusCode::SEE_OTHER {
        bail!(unexpected("A's callback", resp).await);
    }
    let session = set_cookie(&resp, SESSION_COOKIE).ok_or_else(|| anyhow!("no session at A"))?;
    let session_at = started.elapsed();
    let derived = format!("{SESSION_COOKIE}={session}; {REFERENCE_COOKIE}={reference}");
    let cookies = format!("{CSRF_COOKIE}={csrf}; {derived}");
    let resp = http
        .get(format!("{a}/sso/authorize?{query}"))
        .header(COOKIE, &cookies)
        .send()
        .await?;
    if resp.status() != StatusCode::OK {
        bail!(unexpected("A's trust page", resp).await);
    }
    let _ = resp.bytes().await;
    let resp = http
        .post(format!("{a}/sso/consent"))
        .header(COOKIE, &cookies)
        .form(&approval(query, csrf)?)
        .send()
        .await?;
    let ticket = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ticket.contains("code=") {
        bail!(unexpected("A's consent", resp).await);
    }
    let times = FirstLogin {
        session: session_at,
        ticket: started.elapsed(),
    };
    Ok((derived, times))
}
