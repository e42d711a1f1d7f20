//! The benchmark's OIDC flow, the same against baa and against the
//! reference provider: with a signed-in session, `GET authorize`
//! (`response_mode=form_post`, PKCE S256, nonce, state) answered with the
//! auto-submitting form → the code from it → `POST token`
//! (`client_secret_basic`) → the ID token's signature checked against the
//! provider's JWKS, with its issuer, audience, algorithm and nonce.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::header::COOKIE;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use super::unexpected;

/// A relying party registered at a provider.
pub struct Provider {
    /// `iss` of its ID tokens.
    pub issuer: String,
    /// Authorization endpoints to use in turn (one per node).
    pub authorize: Vec<String>,
    /// Token endpoints, in the same order.
    pub token: Vec<String>,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub secret: String,
    /// Registered redirect URI (never followed: the form is parsed).
    pub redirect_uri: String,
    /// The algorithm its ID tokens must carry.
    pub alg: Algorithm,
    /// The provider's signature keys by kid.
    pub keys: HashMap<String, DecodingKey>,
    /// Whether the token request goes to the next node (`false`: the same).
    pub next_node_redeems: bool,
}

/// The signature keys of a JWKS document, by kid.
pub fn jwks_keys(doc: &serde_json::Value) -> HashMap<String, DecodingKey> {
    let mut keys = HashMap::new();
    for k in doc["keys"].as_array().into_iter().flatten() {
        let s = |n: &str| k[n].as_str();
        let key = match (s("kty"), s("crv")) {
            (Some("RSA"), _) => s("n")
                .zip(s("e"))
                .and_then(|(n, e)| DecodingKey::from_rsa_components(n, e).ok()),
            (Some("EC"), Some("P-256")) => s("x")
                .zip(s("y"))
                .and_then(|(x, y)| DecodingKey::from_ec_components(x, y).ok()),
            (Some("OKP"), Some("Ed25519")) => {
                s("x").and_then(|x| DecodingKey::from_ed_components(x).ok())
            }
            _ => None,
        };
        if let (Some(kid), Some(key)) = (s("kid"), key) {
            keys.insert(kid.to_string(), key);
        }
    }
    keys
}

/// The `value` of the hidden input named `name` in a form_post page,
/// whichever order its attributes come in.
pub fn form_field(page: &str, name: &str) -> Option<String> {
    let needle = format!("name=\"{name}\"");
    let at = page.find(&needle)?;
    let start = page[..at].rfind('<')?;
    let end = at + page[at..].find('>')?;
    let tag = &page[start..end];
    let v = tag.find("value=\"")? + "value=\"".len();
    let value = &tag[v..v + tag[v..].find('"')?];
    Some(
        value
            .replace("&amp;", "&")
            .replace("&#x2F;", "/")
            .replace("&#47;", "/")
            .replace("&quot;", "\"")
            .replace("&#39;", "'"),
    )
}

fn random() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// One browser of the benchmark: its own connection and session cookies.
pub struct Browser {
    /// HTTP client (keep-alive, redirects not followed).
    pub http: reqwest::Client,
    /// The session's cookies as one `Cookie` header value.
    pub cookies: String,
    /// Which node it starts at.
    pub index: usize,
}

/// One complete flow of `browser` at `p`; `seq` picks the node.
pub async fn flow(p: &Arc<Provider>, browser: &Browser, seq: u64) -> Result<(), String> {
    let n = p.authorize.len();
    let i = (browser.index + seq as usize) % n;
    let (verifier, nonce, state) = (random(), random(), random());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let resp = browser
        .http
        .get(&p.authorize[i])
        .query(&[
            ("response_type", "code"),
            ("client_id", &p.client_id),
            ("redirect_uri", &p.redirect_uri),
            ("scope", "openid"),
            ("response_mode", "form_post"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("nonce", &nonce),
            ("state", &state),
        ])
        .header(COOKIE, &browser.cookies)
        .send()
        .await
        .map_err(|e| format!("GET authorize: {e}"))?;
    if resp.status() != StatusCode::OK {
        return Err(unexpected("GET authorize", resp).await);
    }
    let page = resp
        .text()
        .await
        .map_err(|e| format!("GET authorize body: {e}"))?;
    if form_field(&page, "state").as_deref() != Some(state.as_str()) {
        return Err("the form_post page does not carry the request's state".into());
    }
    let code = form_field(&page, "code").ok_or("no code in the form_post page")?;
    let j = if p.next_node_redeems { (i + 1) % n } else { i };
    let resp = browser
        .http
        .post(&p.token[j])
        .basic_auth(&p.client_id, Some(&p.secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &p.redirect_uri),
            ("code_verifier", &verifier),
        ])
        .send()
        .await
        .map_err(|e| format!("POST token: {e}"))?;
    if resp.status() != StatusCode::OK {
        return Err(unexpected("POST token", resp).await);
    }
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| format!("POST token body: {e}"))?;
    let token = body["id_token"].as_str().ok_or("no id_token")?;
    check_id_token(p, token, &nonce)
}

/// The checks of OIDC Core §3.1.3.7 the benchmark makes: signature by a
/// published key of the client's algorithm, `iss`, `aud`, `exp`, `nonce`.
pub fn check_id_token(p: &Provider, token: &str, nonce: &str) -> Result<(), String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("ID token: {e}"))?;
    if header.alg != p.alg {
        return Err(format!(
            "ID token signed with {:?}, not {:?}",
            header.alg, p.alg
        ));
    }
    let kid = header.kid.ok_or("ID token without kid")?;
    let key = p.keys.get(&kid).ok_or("ID token of an unknown key")?;
    let mut v = Validation::new(p.alg);
    v.set_issuer(&[&p.issuer]);
    v.set_audience(&[&p.client_id]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(token, key, &v)
        .map_err(|e| format!("ID token: {e}"))?
        .claims;
    if claims["nonce"] != nonce {
        return Err("ID token nonce differs".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_field_reads_either_attribute_order() {
        let baa = r#"<form><input type="hidden" name="code" value="t1.a&amp;b"><input type="hidden" name="state" value="s"></form>"#;
        assert_eq!(form_field(baa, "code").as_deref(), Some("t1.a&b"));
        assert_eq!(form_field(baa, "state").as_deref(), Some("s"));
        let other = r#"<input type="hidden" value="xyz" name="code"/>"#;
        assert_eq!(form_field(other, "code").as_deref(), Some("xyz"));
        assert_eq!(form_field(other, "state"), None);
    }
}
