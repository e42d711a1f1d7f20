//! The loopback listener of RFC 8252 §7.3: a one-shot HTTP server on
//! 127.0.0.1 that receives the browser's redirect with the authorization
//! answer in the query, and shows the browser a closing page.

use std::time::Duration;

use anyhow::{bail, Context};
use maud::{html, DOCTYPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::oauth::{printable, state_matches};

/// Longest request head accepted from the browser.
const MAX_HEAD: usize = 16 * 1024;
/// How long one connection may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The text of the page shown after a successful sign-in.
pub const SIGNED_IN: &str = "You are signed in. You can close this window.";

/// The authorization answer carried by the redirect.
#[derive(Default, PartialEq, Eq)]
pub struct CallbackParams {
    /// The authorization code.
    pub code: Option<String>,
    /// The `state` sent in the request.
    pub state: Option<String>,
    /// The error code, when the agency refused.
    pub error: Option<String>,
    /// The error's description.
    pub error_description: Option<String>,
    /// The issuer of the answer (RFC 9207).
    pub iss: Option<String>,
}

/// What a request to the listener asks for.
#[derive(PartialEq, Eq)]
pub enum Target {
    /// The redirect to `/callback`.
    Callback(CallbackParams),
    /// Anything else.
    NotFound,
}

/// Parses a request head; `Err` when it is not a usable HTTP request.
pub fn parse_request(head: &str) -> Result<Target, &'static str> {
    let line = head.lines().next().ok_or("empty request")?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    if !version.starts_with("HTTP/1.") {
        return Err("unsupported HTTP version");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/callback" {
        return Ok(Target::NotFound);
    }
    if method != "GET" {
        return Err("the callback takes GET");
    }
    let mut p = CallbackParams::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match k.as_ref() {
            "code" => &mut p.code,
            "state" => &mut p.state,
            "error" => &mut p.error,
            "error_description" => &mut p.error_description,
            "iss" => &mut p.iss,
            _ => continue,
        };
        if slot.is_some() {
            return Err("a parameter is repeated");
        }
        *slot = Some(v.into_owned());
    }
    Ok(Target::Callback(p))
}

/// Checks the answer against the request; the code, or why it is refused.
pub fn check_callback(
    p: &CallbackParams,
    expected_state: &str,
    issuer: &str,
    iss_required: bool,
) -> Result<String, String> {
    if !p
        .state
        .as_deref()
        .is_some_and(|s| state_matches(expected_state, s))
    {
        return Err("the answer does not belong to this sign-in (state mismatch)".into());
    }
    match p.iss.as_deref() {
        Some(i) if i != issuer => {
            return Err(format!(
                "the answer came from {}, not from {issuer}",
                printable(i)
            ))
        }
        None if iss_required => return Err("the answer does not name its issuer".into()),
        _ => {}
    }
    if let Some(e) = &p.error {
        let mut msg = format!("the agency answered {}", printable(e));
        if let Some(d) = p.error_description.as_deref().filter(|d| !d.is_empty()) {
            msg.push_str(": ");
            msg.push_str(&printable(d));
        }
        return Err(msg);
    }
    p.code
        .clone()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| "the answer holds no authorization code".into())
}

/// The page shown to the browser.
pub fn page(ok: bool, message: &str) -> String {
    let title = if ok { "Signed in" } else { "Sign-in failed" };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "baa: " (title) }
            }
            body {
                main {
                    h1 { (title) }
                    p { (message) }
                    @if !ok {
                        p { "You can close this window and return to the terminal." }
                    }
                }
            }
        }
    }
    .into_string()
}

async fn write_response(stream: &mut TcpStream, status: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\n\
         Content-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Cache-Control: no-store\r\n\
         Content-Security-Policy: default-src 'none'\r\n\
         Referrer-Policy: no-referrer\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A listener bound to a random port on 127.0.0.1.
pub struct Loopback {
    listener: TcpListener,
    port: u16,
}

/// The browser's redirect, with its connection still open for the answer.
pub struct Callback {
    /// What the redirect carried.
    pub params: CallbackParams,
    stream: TcpStream,
}

impl Callback {
    /// Shows the browser the outcome and closes the connection.
    pub async fn respond(mut self, ok: bool, message: &str) {
        let status = if ok { "200 OK" } else { "400 Bad Request" };
        write_response(&mut self.stream, status, &page(ok, message)).await;
    }
}

/// Reads one request; the callback, or `None` after answering anything else.
async fn read_request(mut stream: TcpStream) -> Option<Callback> {
    let mut buf = Vec::with_capacity(1024);
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 2048];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(());
            }
            if buf.len() > MAX_HEAD {
                return None;
            }
        }
    })
    .await;
    if !matches!(complete, Ok(Some(()))) {
        return None;
    }
    let head = String::from_utf8_lossy(&buf);
    match parse_request(&head) {
        Ok(Target::Callback(params)) => Some(Callback { params, stream }),
        Ok(Target::NotFound) => {
            write_response(&mut stream, "404 Not Found", &page(false, "Not found.")).await;
            None
        }
        Err(why) => {
            write_response(&mut stream, "400 Bad Request", &page(false, why)).await;
            None
        }
    }
}

async fn accept_loop(listener: &TcpListener, tx: mpsc::Sender<Callback>) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .context("accepting the browser's connection")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Some(cb) = read_request(stream).await {
                let _ = tx.send(cb).await;
            }
        });
    }
}

impl Loopback {
    /// Binds 127.0.0.1 on a port the system picks.
    pub async fn bind() -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("listening on 127.0.0.1 for the browser's answer")?;
        let port = listener.local_addr()?.port();
        Ok(Self { listener, port })
    }

    /// The port listened on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the first request to `/callback`, at most `wait`.
    pub async fn wait(self, wait: Duration) -> anyhow::Result<Callback> {
        let (tx, mut rx) = mpsc::channel(4);
        tokio::select! {
            r = accept_loop(&self.listener, tx) => {
                r?;
                bail!("the listener for the browser's answer stopped")
            }
            Some(cb) = rx.recv() => Ok(cb),
            _ = tokio::time::sleep(wait) => bail!(
                "no answer from the browser within {} minutes; run `baa login` again",
                wait.as_secs() / 60
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callback(head: &str) -> CallbackParams {
        match parse_request(head) {
            Ok(Target::Callback(p)) => p,
            _ => panic!("not a callback: {head}"),
        }
    }

    #[test]
    fn parses_the_redirect() {
        let p = callback(
            "GET /callback?code=c%2B1&state=s&iss=https%3A%2F%2Flogin.example HTTP/1.1\r\nHost: 127.0.0.1:5\r\n\r\n",
        );
        assert_eq!(p.code.as_deref(), Some("c+1"));
        assert_eq!(p.state.as_deref(), Some("s"));
        assert_eq!(p.iss.as_deref(), Some("https://login.example"));
        assert!(p.error.is_none());
        assert!(parse_request("GET /favicon.ico HTTP/1.1\r\n\r\n") == Ok(Target::NotFound));
        assert!(parse_request("POST /callback HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_request("GET /callback?code=a&code=b HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_request("garbage\r\n\r\n").is_err());
    }

    const ISS: &str = "https://login.example";

    fn params(code: Option<&str>, state: Option<&str>, iss: Option<&str>) -> CallbackParams {
        CallbackParams {
            code: code.map(String::from),
            state: state.map(String::from),
            iss: iss.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn checks_state_issuer_and_code() {
        let ok = params(Some("c"), Some("st"), Some(ISS));
        assert_eq!(check_callback(&ok, "st", ISS, true), Ok("c".into()));
        assert!(check_callback(&ok, "other", ISS, true).is_err());
        assert!(check_callback(&params(Some("c"), None, Some(ISS)), "st", ISS, true).is_err());
        assert!(check_callback(
            &params(Some("c"), Some("st"), Some("https://evil")),
            "st",
            ISS,
            false
        )
        .is_err());
        assert!(check_callback(&params(Some("c"), Some("st"), None), "st", ISS, true).is_err());
        assert!(check_callback(&params(Some("c"), Some("st"), None), "st", ISS, false).is_ok());
        assert!(check_callback(&params(None, Some("st"), Some(ISS)), "st", ISS, true).is_err());
        let denied = CallbackParams {
            error: Some("access_denied".into()),
            error_description: Some("the user said no".into()),
            ..params(None, Some("st"), Some(ISS))
        };
        assert_eq!(
            check_callback(&denied, "st", ISS, true),
            Err("the agency answered access_denied: the user said no".into())
        );
    }

    #[test]
    fn pages_escape_their_message() {
        let p = page(false, "<script>alert(1)</script>");
        assert!(!p.contains("<script>"));
        assert!(p.contains("&lt;script&gt;"));
        assert!(page(true, SIGNED_IN).contains(SIGNED_IN));
    }

    #[tokio::test]
    async fn answers_the_browser() {
        let lb = Loopback::bind().await.unwrap();
        let port = lb.port();
        let waiter = tokio::spawn(lb.wait(Duration::from_secs(10)));
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/favicon.ico").await.starts_with("HTTP/1.1 404"));
        let browser = tokio::spawn(get("/callback?code=c&state=s"));
        let cb = waiter.await.unwrap().unwrap();
        assert_eq!(cb.params.code.as_deref(), Some("c"));
        cb.respond(true, SIGNED_IN).await;
        let answer = browser.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"));
        assert!(answer.contains(SIGNED_IN));
    }
}
