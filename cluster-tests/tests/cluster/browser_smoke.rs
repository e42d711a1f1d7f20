//! The browser test kit works on this machine: Chromium starts headless under
//! chromedriver, renders a page and answers queries on it; tabs, cookies and a
//! killed-and-reopened browser behave as the flow tests expect.

use std::time::Duration;

use baa_cluster_tests::browser::{Cookie, DEFAULT_DEADLINE};
use baa_cluster_tests::Browser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_smoke() {
    let mut b = Browser::start("MAP *.localtest 127.0.0.1")
        .await
        .unwrap_or_else(|e| panic!("starting the browser: {e:#}"));

    b.goto("data:text/html,<p id=x>hi</p>").await.unwrap();
    assert_eq!(b.text("#x").await.unwrap(), Some("hi".to_string()));
    assert_eq!(b.text("#absent").await.unwrap(), None);

    let first = b.current_tab().await.unwrap();
    let second = b.new_tab().await.unwrap();
    b.goto("data:text/html,<p id=y>two</p>").await.unwrap();
    b.wait_for_element("#y", DEFAULT_DEADLINE).await.unwrap();
    b.switch_to(&first).await.unwrap();
    assert_eq!(b.text("#x").await.unwrap(), Some("hi".to_string()));
    b.switch_to(&second).await.unwrap();
    b.close_tab().await.unwrap();
    assert_eq!(b.tabs().await.unwrap(), vec![first]);

    let err = b
        .wait_for_element("#never", Duration::from_millis(300))
        .await
        .expect_err("no such element");
    let msg = format!("{err:#}");
    assert!(msg.contains("current URL: data:text/html"), "{msg}");
    assert!(msg.contains("<p id=\"x\">hi</p>"), "{msg}");

    b.kill_browser().await.unwrap();
    b.reopen().await.unwrap();
    b.goto("data:text/html,<p id=z>again</p>").await.unwrap();
    assert_eq!(b.text("#z").await.unwrap(), Some("again".to_string()));
}

/// Answers every HTTP request on `listener` with a page naming the `Host` header.
async fn serve_host_echo(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                match conn.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => len += n,
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let host = head
                .lines()
                .find_map(|l| l.strip_prefix("Host: ").or(l.strip_prefix("host: ")))
                .unwrap_or("");
            let body = format!("<p id=host>{host}</p>");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_maps_hosts_and_handles_cookies() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve_host_echo(listener));
    let b = Browser::start("MAP *.localtest 127.0.0.1")
        .await
        .unwrap_or_else(|e| panic!("starting the browser: {e:#}"));

    let host = format!("shop.baa.localtest:{port}");
    b.goto(&format!("http://{host}/")).await.unwrap();
    assert_eq!(b.text("#host").await.unwrap(), Some(host.clone()));

    b.add_cookie("smoke", "v1").await.unwrap();
    let cookies = b.cookies().await.unwrap();
    assert!(
        cookies
            .iter()
            .any(|(n, v, d)| n == "smoke" && v == "v1" && d == "shop.baa.localtest"),
        "{cookies:?}"
    );
    let seen = b.execute("return document.cookie;").await.unwrap();
    assert_eq!(seen, serde_json::json!("smoke=v1"));
    b.delete_cookie("smoke").await.unwrap();
    assert!(b.cookies().await.unwrap().is_empty());

    // A cookie for the shared parent domain reaches a sibling host.
    let shared = Cookie::parse("shared=v2; Domain=baa.localtest; Path=/; SameSite=Lax").unwrap();
    b.add_raw_cookie(shared).await.unwrap();
    b.goto(&format!("http://news.baa.localtest:{port}/"))
        .await
        .unwrap();
    let cookies = b.cookies().await.unwrap();
    assert_eq!(
        cookies,
        vec![("shared".into(), "v2".into(), ".baa.localtest".into())]
    );

    b.goto(&format!("http://partner.localtest:{port}/x"))
        .await
        .unwrap();
    let url = b
        .wait_for_url(|u| u.ends_with("/x"), "the partner page", DEFAULT_DEADLINE)
        .await
        .unwrap();
    assert!(url.starts_with("http://partner.localtest:"), "{url}");
    server.abort();
}
