//! A real HTTP client (hyper's HTTP/1.1) for the `--metrics` pages.

use std::net::SocketAddr;

use http_body_util::BodyExt as _;
use tokio::net::TcpStream;

/// GET `path` from `addr` with hyper's HTTP/1.1 client: (status, content type, body).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    get_as(addr, path, &addr.to_string()).await
}

/// [`get`] with `host` in the `Host` header.
pub async fn get_as(addr: SocketAddr, path: &str, host: &str) -> (u16, String, String) {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to --metrics");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("HTTP handshake");
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).expect("UTF-8 body"),
    )
}
