//! The partner site's HTML pages. Every value goes through maud's escaping.

use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use crate::oidc::Claims;

/// The claims shown on the signed-in page, in this order.
pub const SHOWN_CLAIMS: [&str; 4] = ["sub", "preferred_username", "name", "email"];

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;\
padding:0 1rem;line-height:1.5}dt{font-weight:600}dd{margin:0 0 .5rem 1rem}\
.error{padding:.75rem 1rem;background:#fde8e8;color:#8a1111;border-radius:.3rem}\
code{font-family:ui-monospace,monospace}";

fn layout(site: &str, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — " (site) }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                main { (body) }
            }
        }
    }
}

fn claim_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The home page of a signed-in browser.
pub fn signed_in(site: &str, claims: &Claims, sid: Option<&str>, has_access_token: bool) -> Markup {
    let body = html! {
        h1 { (site) }
        p { "Signed in as "
            strong { (claims.get("preferred_username").or_else(|| claims.get("sub")).map(claim_text).unwrap_or_default()) }
            "."
        }
        dl id="claims" {
            @for name in SHOWN_CLAIMS {
                @if let Some(value) = claims.get(name) {
                    dt { (name) }
                    dd id={ "claim-" (name) } { (claim_text(value)) }
                }
            }
        }
        p { "Agency session (sid): "
            code id="sid" { (sid.unwrap_or("")) }
        }
        @if has_access_token {
            p { "An access token was issued with the ID token." }
        }
        p { a id="signout" href="/logout" { "Sign out" } }
    };
    layout(site, "Signed in", body)
}

/// The home page of a browser without a session, with the error of its last
/// login attempt, if any.
pub fn signed_out(site: &str, last_error: Option<&str>) -> Markup {
    let body = html! {
        h1 { (site) }
        p id="status" { "Not signed in." }
        @if let Some(error) = last_error {
            p class="error" { "The last sign-in attempt ended with: "
                code id="login-error" { (error) }
            }
        }
        p { a id="signin" href="/login" { "Sign in" } }
    };
    layout(site, "Not signed in", body)
}

/// An error page.
pub fn failure(site: &str, title: &str, message: &str) -> Markup {
    let body = html! {
        h1 { (site) }
        h2 { (title) }
        p class="error" id="error" { (message) }
        p { a href="/" { "Back to " (site) } }
    };
    layout(site, title, body)
}
