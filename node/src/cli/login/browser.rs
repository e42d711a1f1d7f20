//! Opening the user's browser: `$BROWSER` when set, else `xdg-open`. The URL
//! is always printed too, and a browser that does not start is not an error.

use std::process::{Command, Stdio};

/// The program and arguments that open `url`. `$BROWSER` is one program
/// taking the URL as its only argument; when it contains `%s`, it is a
/// command line split on whitespace with `%s` replaced by the URL (no shell
/// is involved, so the URL stays one argument).
pub fn command(browser: Option<&str>, url: &str) -> (String, Vec<String>) {
    match browser.map(str::trim).filter(|b| !b.is_empty()) {
        Some(b) if b.contains("%s") => {
            let mut words = b.split_whitespace().map(|w| w.replace("%s", url));
            let program = words.next().unwrap_or_default();
            (program, words.collect())
        }
        Some(b) => (b.to_string(), vec![url.to_string()]),
        None => ("xdg-open".to_string(), vec![url.to_string()]),
    }
}

/// Prints `url` on stderr and, when `launch`, tries to open it in the browser.
pub fn open(url: &str, launch: bool) {
    eprintln!("Open this URL to sign in: {url}");
    if !launch {
        return;
    }
    let browser = std::env::var("BROWSER").ok();
    let (program, args) = command(browser.as_deref(), url);
    // Detached from our output: a long-lived browser must not hold our
    // stdout or stderr open after we exit.
    let started = Command::new(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match started {
        Ok(mut child) => {
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
        Err(e) => eprintln!("could not start the browser ({program}: {e}); open the URL yourself"),
    }
}

#[cfg(test)]
mod tests {
    use super::command;

    const URL: &str = "https://h.example/sso/authorize?a=1&b=two words";

    fn owned(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_is_xdg_open() {
        assert_eq!(command(None, URL), ("xdg-open".into(), owned(&[URL])));
        assert_eq!(command(Some("  "), URL), ("xdg-open".into(), owned(&[URL])));
    }

    #[test]
    fn browser_is_one_program() {
        assert_eq!(
            command(Some("/opt/My Browser/run"), URL),
            ("/opt/My Browser/run".into(), owned(&[URL]))
        );
    }

    #[test]
    fn percent_s_is_substituted_into_one_argument() {
        assert_eq!(
            command(Some("firefox --new-window %s"), URL),
            ("firefox".into(), owned(&["--new-window", URL]))
        );
        assert_eq!(
            command(Some("open --url=%s"), "u;rm -rf /"),
            ("open".into(), owned(&["--url=u;rm -rf /"]))
        );
    }
}
