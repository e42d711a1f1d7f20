//! Server-rendered HTML pages of the agency (sign-in, trust, sign-out, error,
//! form_post) and the response helper that serves them with a strict CSP.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use rand::rngs::OsRng;
use rand::RngCore;

/// The one stylesheet of every page, served inline under the CSP nonce.
const STYLE: &str = r#"
:root{color-scheme:light dark;--fg:#1b1b1f;--bg:#f6f6f8;--card:#fff;--muted:#55555f;--accent:#1d4ed8;--accent-fg:#fff;--err-bg:#fde8e8;--err-fg:#8a1111;--line:#c9c9d2}
@media (prefers-color-scheme:dark){:root{--fg:#ececf1;--bg:#15151a;--card:#202028;--muted:#b0b0bc;--accent:#8ab4ff;--accent-fg:#0b0b10;--err-bg:#4a1616;--err-fg:#ffd6d6;--line:#4a4a56}}
*{box-sizing:border-box}
html{font-size:100%}
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;line-height:1.5;color:var(--fg);background:var(--bg)}
main{max-width:32rem;margin:2rem auto;padding:1.5rem;background:var(--card);border:1px solid var(--line);border-radius:.5rem}
@media (max-width:36rem){main{margin:0;border:0;border-radius:0;min-height:100vh}}
h1{font-size:1.5rem;margin:0 0 1rem}
p,ul,fieldset{margin:0 0 1rem}
label{display:block;font-weight:600;margin:.75rem 0 .25rem}
.choice label{display:inline;font-weight:400;margin:0 0 0 .4rem}
.choice{margin:.4rem 0}
input[type=text],input[type=password]{width:100%;font:inherit;padding:.5rem .6rem;color:var(--fg);background:var(--bg);border:1px solid var(--muted);border-radius:.3rem}
fieldset{border:1px solid var(--line);border-radius:.3rem;padding:.5rem 1rem}
legend{font-weight:600;padding:0 .3rem}
button,.button{display:inline-block;font:inherit;font-weight:600;padding:.55rem 1.2rem;margin:1rem .5rem 0 0;border-radius:.3rem;border:2px solid var(--accent);background:var(--accent);color:var(--accent-fg);cursor:pointer;text-decoration:none}
button.secondary{background:transparent;color:var(--accent)}
a{color:var(--accent)}
:focus-visible{outline:3px solid var(--accent);outline-offset:2px}
.alert{padding:.75rem 1rem;margin:0 0 1rem;border-radius:.3rem;background:var(--err-bg);color:var(--err-fg)}
.muted{color:var(--muted)}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
"#;

/// The only script of the form_post page: submits the form already in the page.
const FORM_POST_SCRIPT: &str =
    "window.addEventListener('load',function(){document.getElementById('fp').submit();});";

/// The Content-Security-Policy of one response: a fresh nonce for the inline
/// style and script, and the origins forms on the page may post to.
#[derive(Debug, Clone)]
pub struct Csp {
    /// Base64url nonce (16 random bytes) for `<style>` and `<script>` tags.
    pub nonce: String,
    /// Origins allowed as form targets besides `'self'`, e.g.
    /// `https://shop.baa.localtest:9443`.
    pub form_action: Vec<String>,
}

impl Csp {
    /// A policy with a fresh random nonce and the given extra form-action origins.
    pub fn new(form_action: Vec<String>) -> Self {
        let mut bytes = [0u8; 16];
        OsRng.fill_bytes(&mut bytes);
        Csp {
            nonce: URL_SAFE_NO_PAD.encode(bytes),
            form_action,
        }
    }

    /// The `Content-Security-Policy` header value.
    pub fn header_value(&self) -> String {
        let mut form_action = String::from("'self'");
        for origin in &self.form_action {
            form_action.push(' ');
            form_action.push_str(origin);
        }
        format!(
            "default-src 'none'; style-src 'nonce-{n}'; script-src 'nonce-{n}'; \
             img-src 'self' data:; form-action {form_action}; \
             frame-ancestors 'none'; base-uri 'none'",
            n = self.nonce
        )
    }
}

/// An HTML response with the page's CSP and the no-store, no-frame headers.
pub fn html_response(status: StatusCode, body: Markup, csp: &Csp) -> HttpResponse {
    let mut res = HttpResponse::build(status);
    res.insert_header((
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    ))
    .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
    .insert_header((header::PRAGMA, HeaderValue::from_static("no-cache")))
    .insert_header((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
    .insert_header((
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ))
    .insert_header((
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    ));
    // A header value that cannot be encoded (a caller passing a control
    // character) falls back to the strictest policy rather than none.
    let policy = HeaderValue::from_str(&csp.header_value()).unwrap_or_else(|_| {
        HeaderValue::from_static(
            "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        )
    });
    res.insert_header((header::CONTENT_SECURITY_POLICY, policy));
    res.body(body.into_string())
}

/// The common page shell: doctype, head with the nonce'd style, and `<main>`.
fn layout(csp: &Csp, title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) }
                style nonce=(csp.nonce) { (PreEscaped(STYLE)) }
            }
            body {
                main { (content) }
            }
        }
    }
}

/// Hidden inputs for the CSRF token and the carried-over parameters.
fn hidden_fields(csrf: Option<&str>, hidden: &[(String, String)]) -> Markup {
    html! {
        @if let Some(csrf) = csrf {
            input type="hidden" name="csrf" value=(csrf);
        }
        @for (name, value) in hidden {
            input type="hidden" name=(name) value=(value);
        }
    }
}

/// What the sign-in page shows and where its form posts.
#[derive(Debug)]
pub struct SignInPage<'a> {
    /// Form target (an agency path).
    pub action: &'a str,
    /// CSRF token for the `csrf` field.
    pub csrf: &'a str,
    /// Parameters carried through the form (the OIDC authorize request).
    pub hidden: &'a [(String, String)],
    /// Prefilled username.
    pub username: &'a str,
    /// Message of a failed attempt.
    pub error: Option<&'a str>,
    /// Name of the partner site the user is signing in for.
    pub site_name: Option<&'a str>,
    /// The error's machine-readable code, if any beyond a failed password.
    pub code: Option<&'a str>,
    /// The user's home agency (name, link), to sign in there instead.
    pub home: Option<(&'a str, &'a str)>,
    /// The other agencies of the set (name, link): home-agency discovery.
    pub agencies: &'a [(String, String)],
}

/// Home-agency discovery: the other agencies of the set, to sign in there.
fn agencies(list: &[(String, String)]) -> Markup {
    html! {
        @if !list.is_empty() {
            section id="agencies" {
                p { "Your account is at another agency? Sign in there:" }
                ul {
                    @for (name, href) in list {
                        li { a.agency href=(href) { (name) } }
                    }
                }
            }
        }
    }
}

/// The sign-in page: username and password.
pub fn sign_in(csp: &Csp, p: &SignInPage<'_>) -> Markup {
    layout(
        csp,
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if let Some(site) = p.site_name {
                p { "to continue to " strong { (site) } }
            }
            @if let Some(error) = p.error {
                div.alert role="alert" id="error" data-code=[p.code] { (error) }
            }
            @if let Some((name, href)) = p.home {
                p id="home-agency" {
                    "Sign in here, or at your home agency: "
                    a href=(href) { (name) }
                }
            }
            form id="signin" method="post" action=(p.action) {
                (hidden_fields(Some(p.csrf), p.hidden))
                label for="username" { "Username" }
                input type="text" id="username" name="username" value=(p.username)
                    autocomplete="username" autocapitalize="none" spellcheck="false"
                    required autofocus[p.username.is_empty()];
                label for="password" { "Password" }
                input type="password" id="password" name="password"
                    autocomplete="current-password" required
                    autofocus[!p.username.is_empty()];
                button type="submit" id="submit" { "Sign in" }
            }
            (agencies(p.agencies))
        },
    )
}

/// What the trust page shows: the site asking and the login parameters the
/// user may give it.
#[derive(Debug)]
pub struct TrustPage<'a> {
    /// Form target (an agency path).
    pub action: &'a str,
    /// CSRF token for the `csrf` field.
    pub csrf: &'a str,
    /// Parameters carried through the form (the OIDC authorize request).
    pub hidden: &'a [(String, String)],
    /// Display name of the partner site.
    pub site_name: &'a str,
    /// The site's `client_id`.
    pub client_id: &'a str,
    /// Scopes the site asks for.
    pub scopes: &'a [String],
    /// The user's account name.
    pub username: &'a str,
    /// The user's pseudonym for this site.
    pub pseudonym: &'a str,
    /// The user's display name.
    pub display_name: &'a str,
    /// The user's email address, if known.
    pub email: Option<&'a str>,
}

/// A scope in plain words.
fn scope_words(scope: &str) -> &str {
    match scope {
        "openid" => "know who you are",
        "profile" => "your name",
        "email" => "your email address",
        other => other,
    }
}

/// The trust page: approve the site and choose what it gets.
pub fn trust(csp: &Csp, p: &TrustPage<'_>) -> Markup {
    layout(
        csp,
        "Trust this site?",
        html! {
            h1 { "Trust " (p.site_name) "?" }
            p {
                strong { (p.site_name) } " "
                span.muted { "(" code { (p.client_id) } ")" }
                " asks to:"
            }
            ul id="scopes" {
                @for scope in p.scopes {
                    li { (scope_words(scope)) }
                }
            }
            form id="trust" method="post" action=(p.action) {
                (hidden_fields(Some(p.csrf), p.hidden))
                (account_choice(p))
                (details_choice(p))
                button type="submit" id="approve" name="decision" value="approve" {
                    "Approve"
                }
                button.secondary type="submit" id="deny" name="decision" value="deny" {
                    "Deny"
                }
            }
        },
    )
}

/// The trust page's choice of the account name the site gets.
fn account_choice(p: &TrustPage<'_>) -> Markup {
    html! {
        fieldset {
            legend { "Account name the site gets" }
            div.choice {
                input type="radio" id="account_username" name="account_name"
                    value="username" checked;
                label for="account_username" {
                    "Your username: " strong { (p.username) }
                }
            }
            div.choice {
                input type="radio" id="account_pseudonym" name="account_name"
                    value="pseudonym";
                label for="account_pseudonym" {
                    "A pseudonym: " strong { (p.pseudonym) }
                }
            }
        }
    }
}

/// The trust page's choice of the details the site gets.
fn details_choice(p: &TrustPage<'_>) -> Markup {
    html! {
        fieldset {
            legend { "Details the site gets" }
            div.choice {
                input type="checkbox" id="share_name" name="share_name"
                    value="1" checked;
                label for="share_name" {
                    "Your name: " strong { (p.display_name) }
                }
            }
            @if let Some(email) = p.email {
                div.choice {
                    input type="checkbox" id="share_email" name="share_email"
                        value="1";
                    label for="share_email" {
                        "Your email address: " strong { (email) }
                    }
                }
            } @else {
                p.muted { "No email address is on file." }
            }
        }
    }
}

/// What the error page shows.
#[derive(Debug)]
pub struct ErrorPage<'a> {
    /// Heading and title.
    pub title: &'a str,
    /// Machine-readable error code.
    pub code: &'a str,
    /// Explanation for the user.
    pub message: &'a str,
}

/// The error page. It links only to the agency home, never elsewhere.
pub fn error_page(csp: &Csp, p: &ErrorPage<'_>) -> Markup {
    layout(
        csp,
        p.title,
        html! {
            h1 { (p.title) }
            div.alert role="alert" { (p.message) }
            p.muted { "Error code: " code id="error-code" { (p.code) } }
            p { a href="/" { "Agency home" } }
        },
    )
}

/// The response_mode=form_post page: where it posts and what.
#[derive(Debug)]
pub struct FormPostPage<'a> {
    /// The site's registered `redirect_uri`.
    pub action: &'a str,
    /// Response parameters (`code`, `state`, `error`, …).
    pub fields: &'a [(String, String)],
}

/// The auto-submitting form that hands the response to the site.
pub fn form_post(csp: &Csp, p: &FormPostPage<'_>) -> Markup {
    layout(
        csp,
        "Signing you in…",
        html! {
            h1 { "Signing you in…" }
            form id="fp" method="post" action=(p.action) {
                (hidden_fields(None, p.fields))
                noscript {
                    p { "JavaScript is off. Press Continue to go on to the site." }
                    button type="submit" id="continue" { "Continue" }
                }
            }
            script nonce=(csp.nonce) { (PreEscaped(FORM_POST_SCRIPT)) }
        },
    )
}

/// What the sign-out confirmation page shows.
#[derive(Debug)]
pub struct SignOutPage<'a> {
    /// Form target (an agency path).
    pub action: &'a str,
    /// CSRF token for the `csrf` field.
    pub csrf: &'a str,
    /// Parameters carried through the form (the end-session request).
    pub hidden: &'a [(String, String)],
    /// The signed-in user, if any.
    pub username: Option<&'a str>,
}

/// The sign-out confirmation page.
pub fn sign_out(csp: &Csp, p: &SignOutPage<'_>) -> Markup {
    layout(
        csp,
        "Sign out",
        html! {
            h1 { "Sign out of the agency?" }
            @match p.username {
                Some(user) => {
                    p { "You are signed in as " strong { (user) } "." }
                }
                None => {
                    p { "You are not signed in." }
                }
            }
            form id="signout" method="post" action=(p.action) {
                (hidden_fields(Some(p.csrf), p.hidden))
                button type="submit" id="confirm" { "Sign out" }
            }
        },
    )
}

/// The page after signing out, with a link back to the site when the caller
/// has checked `continue_to` is a registered URI.
pub fn signed_out(csp: &Csp, continue_to: Option<&str>) -> Markup {
    layout(
        csp,
        "Signed out",
        html! {
            h1 { "You are signed out." }
            @if let Some(url) = continue_to {
                p { a id="continue" href=(url) { "Continue" } }
            }
        },
    )
}

/// The device page: enter the code an app shows (RFC 8628).
pub fn device_entry(csp: &Csp, csrf: &str, user_code: &str, error: Option<&str>) -> Markup {
    layout(
        csp,
        "Connect a device",
        html! {
            h1 { "Connect a device or app" }
            p { "Enter the code the app shows you." }
            @if let Some(e) = error {
                div id="error" role="alert" { (e) }
            }
            form id="device" method="post" action="/device" {
                (hidden_fields(Some(csrf), &[]))
                label for="user_code" { "Code" }
                input id="user_code" name="user_code" type="text" value=(user_code)
                    autocomplete="one-time-code" autocapitalize="characters" spellcheck="false" required;
                button type="submit" id="submit" { "Continue" }
            }
        },
    )
}

/// The device page's confirmation: which app, approve or decline.
pub fn device_confirm(
    csp: &Csp,
    csrf: &str,
    user_code: &str,
    app_name: &str,
    scopes: &[String],
) -> Markup {
    layout(
        csp,
        "Connect a device",
        html! {
            h1 { "Connect " strong id="app-name" { (app_name) } "?" }
            p { "The app asks to use your session at the agency. It gets:" }
            ul {
                @for s in scopes { li { (s) } }
            }
            form id="device-confirm" method="post" action="/device/decide" {
                (hidden_fields(Some(csrf), &[("user_code".to_string(), user_code.to_string())]))
                button type="submit" id="approve" name="decision" value="approve" { "Connect" }
                button type="submit" id="deny" name="decision" value="deny" { "Cancel" }
            }
        },
    )
}

/// The device page after the decision.
pub fn device_done(csp: &Csp, approved: bool) -> Markup {
    layout(
        csp,
        "Connect a device",
        html! {
            @if approved {
                h1 id="done" { "Connected." }
                p { "You can return to the app now." }
            } @else {
                h1 id="done" { "Not connected." }
                p { "The app was not given access." }
            }
        },
    )
}

/// The page a native app's loopback listener is redirected to after sign-in.
pub fn app_done(csp: &Csp) -> Markup {
    layout(
        csp,
        "Signed in",
        html! {
            h1 id="done" { "You are signed in." }
            p { "You can close this window and return to the app." }
        },
    )
}

/// What the agency's landing page shows.
#[derive(Debug)]
pub struct HomePage<'a> {
    /// Name of the agency.
    pub agency: &'a str,
    /// The signed-in user: (username, display name).
    pub user: Option<(&'a str, &'a str)>,
    /// Sites the user trusts: (client_id, name).
    pub sites: &'a [(String, String)],
}

/// The agency's landing page.
pub fn home(csp: &Csp, p: &HomePage<'_>) -> Markup {
    layout(
        csp,
        p.agency,
        html! {
            h1 { (p.agency) }
            @match p.user {
                Some((username, display_name)) => {
                    p {
                        "Signed in as " strong { (display_name) }
                        " (" code { (username) } ")."
                    }
                    h2 { "Trusted sites" }
                    @if p.sites.is_empty() {
                        p.muted { "You have not approved any sites yet." }
                    } @else {
                        ul id="sites" {
                            @for (client_id, name) in p.sites {
                                li { (name) " " span.muted { "(" code { (client_id) } ")" } }
                            }
                        }
                    }
                    p { a.button href="/sso/logout" { "Sign out" } }
                }
                None => {
                    p { "Not signed in." }
                    p { a.button href="/sso/signin" { "Sign in" } }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVIL: &str = r#"<script>alert("x")</script>'&"#;
    const EVIL_ESCAPED: &str = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;'&amp;";

    fn csp() -> Csp {
        Csp::new(vec!["https://shop.baa.localtest:9443".into()])
    }

    fn evil_pairs() -> Vec<(String, String)> {
        vec![(EVIL.to_string(), EVIL.to_string())]
    }

    /// No raw `<script>` from input, the escaped form is present, and any
    /// script element carries the nonce.
    fn assert_escaped(page: &str, csp: &Csp) {
        assert!(!page.contains("<script>alert"), "unescaped input: {page}");
        assert!(!page.contains(r#"alert("x")"#), "unescaped quote: {page}");
        assert!(page.contains(EVIL_ESCAPED), "escaped value missing: {page}");
        for (i, _) in page.match_indices("<script") {
            assert!(page[i..].starts_with(&format!("<script nonce=\"{}\"", csp.nonce)));
        }
        assert!(page.contains(&format!("<style nonce=\"{}\">", csp.nonce)));
        assert!(page.starts_with("<!DOCTYPE html><html lang=\"en\">"));
    }

    #[test]
    fn nonce_is_fresh_and_url_safe() {
        let a = Csp::new(vec![]);
        let b = Csp::new(vec![]);
        assert_ne!(a.nonce, b.nonce);
        assert_eq!(a.nonce.len(), 22);
        assert!(a
            .nonce
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn sign_in_escapes_everything() {
        let csp = csp();
        let hidden = evil_pairs();
        let page = sign_in(
            &csp,
            &SignInPage {
                action: EVIL,
                csrf: EVIL,
                hidden: &hidden,
                username: EVIL,
                error: Some(EVIL),
                site_name: Some(EVIL),
                code: Some(EVIL),
                home: Some((EVIL, EVIL)),
                agencies: &[(EVIL.into(), EVIL.into())],
            },
        )
        .into_string();
        assert_escaped(&page, &csp);
        assert!(page.contains(r#"role="alert""#));
        assert!(page.contains(r#"id="signin""#));
        assert!(page.contains(r#"autocomplete="current-password""#));
        assert!(page.contains("to continue to"));
    }

    #[test]
    fn trust_escapes_everything() {
        let csp = csp();
        let hidden = evil_pairs();
        let scopes = vec!["openid".to_string(), "email".to_string(), EVIL.to_string()];
        let page = trust(
            &csp,
            &TrustPage {
                action: EVIL,
                csrf: EVIL,
                hidden: &hidden,
                site_name: EVIL,
                client_id: EVIL,
                scopes: &scopes,
                username: EVIL,
                pseudonym: EVIL,
                display_name: EVIL,
                email: Some(EVIL),
            },
        )
        .into_string();
        assert_escaped(&page, &csp);
        assert!(page.contains("know who you are"));
        assert!(page.contains("your email address"));
        assert!(page.contains(r#"id="share_email""#));
        assert!(page.contains(r#"id="approve" name="decision" value="approve""#));
        assert!(page.contains(r#"id="deny" name="decision" value="deny""#));
    }

    #[test]
    fn trust_without_email_has_no_email_choice() {
        let csp = csp();
        let page = trust(
            &csp,
            &TrustPage {
                action: "/sso/trust",
                csrf: "t",
                hidden: &[],
                site_name: "Shop",
                client_id: "shop",
                scopes: &["openid".to_string()],
                username: "alice",
                pseudonym: "p-123",
                display_name: "Alice",
                email: None,
            },
        )
        .into_string();
        assert!(!page.contains("share_email"));
        assert!(
            page.contains(r#"id="account_username" name="account_name" value="username" checked"#)
        );
    }

    #[test]
    fn error_page_escapes_and_links_only_home() {
        let csp = csp();
        let page = error_page(
            &csp,
            &ErrorPage {
                title: EVIL,
                code: EVIL,
                message: EVIL,
            },
        )
        .into_string();
        assert_escaped(&page, &csp);
        assert_eq!(page.matches("href=").count(), 1);
        assert!(page.contains(r#"href="/""#));
        assert!(page.contains(r#"<code id="error-code">"#));
    }

    #[test]
    fn form_post_escapes_and_submits_with_nonce() {
        let csp = csp();
        let fields = vec![
            ("code".to_string(), "abc".to_string()),
            ("state".to_string(), EVIL.to_string()),
        ];
        let page = form_post(
            &csp,
            &FormPostPage {
                action: "https://shop.baa.localtest:9443/cb?a=1&b=\"2\"",
                fields: &fields,
            },
        )
        .into_string();
        assert_escaped(&page, &csp);
        assert!(page.contains(
            r#"<form id="fp" method="post" action="https://shop.baa.localtest:9443/cb?a=1&amp;b=&quot;2&quot;">"#
        ));
        assert!(page.contains(r#"<input type="hidden" name="code" value="abc">"#));
        assert!(page.contains("<noscript>"));
        assert!(page.contains(r#"<button type="submit" id="continue">Continue</button>"#));
        assert!(page.contains(&format!(
            "<script nonce=\"{}\">{}</script>",
            csp.nonce, FORM_POST_SCRIPT
        )));
    }

    #[test]
    fn sign_out_pages_escape() {
        let csp = csp();
        let hidden = evil_pairs();
        let page = sign_out(
            &csp,
            &SignOutPage {
                action: EVIL,
                csrf: EVIL,
                hidden: &hidden,
                username: Some(EVIL),
            },
        )
        .into_string();
        assert_escaped(&page, &csp);
        assert!(page.contains(r#"id="signout""#));

        let page = sign_out(
            &csp,
            &SignOutPage {
                action: "/sso/logout",
                csrf: "t",
                hidden: &[],
                username: None,
            },
        )
        .into_string();
        assert!(page.contains("You are not signed in."));

        let page = signed_out(&csp, Some(EVIL)).into_string();
        assert!(page.contains(&format!(r#"href="{EVIL_ESCAPED}""#)));
        assert!(!page.contains("<script>alert"));
        let page = signed_out(&csp, None).into_string();
        assert!(!page.contains("href="));
    }

    #[test]
    fn home_escapes() {
        let csp = csp();
        let sites = evil_pairs();
        let page = home(
            &csp,
            &HomePage {
                agency: EVIL,
                user: Some((EVIL, EVIL)),
                sites: &sites,
            },
        )
        .into_string();
        assert_escaped(&page, &csp);
        assert!(page.contains(r#"href="/sso/logout""#));

        let page = home(
            &csp,
            &HomePage {
                agency: "baa",
                user: None,
                sites: &[],
            },
        )
        .into_string();
        assert!(page.contains("Not signed in"));
        assert!(page.contains(r#"href="/sso/signin""#));
    }

    #[test]
    fn response_headers() {
        let csp = csp();
        let res = html_response(
            StatusCode::OK,
            form_post(
                &csp,
                &FormPostPage {
                    action: "https://shop.baa.localtest:9443/cb",
                    fields: &[],
                },
            ),
            &csp,
        );
        let h = |name| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let policy = h(header::CONTENT_SECURITY_POLICY);
        assert!(policy.contains(&format!("script-src 'nonce-{}'", csp.nonce)));
        assert!(policy.contains(&format!("style-src 'nonce-{}'", csp.nonce)));
        assert!(policy.contains("form-action 'self' https://shop.baa.localtest:9443;"));
        assert!(policy.contains("frame-ancestors 'none'"));
        assert!(policy.contains("default-src 'none'"));
        assert_eq!(h(header::CACHE_CONTROL), "no-store");
        assert_eq!(h(header::PRAGMA), "no-cache");
        assert_eq!(h(header::CONTENT_TYPE), "text/html; charset=utf-8");
        assert_eq!(h(header::X_FRAME_OPTIONS), "DENY");
        assert_eq!(h(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(h(header::REFERRER_POLICY), "no-referrer");

        let empty = Csp::new(vec![]);
        let res = html_response(StatusCode::BAD_REQUEST, html! { "x" }, &empty);
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let policy = res
            .headers()
            .get(header::CONTENT_SECURITY_POLICY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(policy.contains("form-action 'self';"));
    }
}
