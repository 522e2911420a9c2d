//! The stream protocols a connection offers follow `accept` and the drop of its queue, on
//! connections that were already open when the list changed.

mod common;

use std::time::Duration;

use common::*;
use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::StreamProtocol;
use punchgate::Node;

const PROTOCOL: StreamProtocol = StreamProtocol::new("/punchgate-test/offered/1.0.0");

/// Opens a stream on `connection`, sends 4 bytes and reads them back. Streams are negotiated
/// lazily (multistream-select V1Lazy), so a refusal shows up on the first read.
async fn round_trip(
    a: &Node,
    connection: &punchgate::net::stream::ConnectionInfo,
) -> Result<(), String> {
    let mut stream = a
        .handle()
        .open_stream_on(connection, PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    let exchange = async {
        stream.write_all(b"ping").await?;
        stream.flush().await?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok(buf)) if &buf == b"ping" => Ok(()),
        Ok(Ok(buf)) => Err(format!("wrong echo {buf:?}")),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => panic!("no answer and no refusal within 10 s"),
    }
}

/// Accepts the protocol on `b` and echoes every stream, until the task is aborted (which drops
/// the queue).
fn serve_echo(b: &Node) -> tokio::task::JoinHandle<()> {
    let mut incoming = b.handle().accept(PROTOCOL, 4).expect("accept");
    tokio::spawn(async move {
        while let Some(mut arrived) = incoming.next().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                if arrived.stream.read_exact(&mut buf).await.is_ok() {
                    let _ = arrived.stream.write_all(&buf).await;
                    let _ = arrived.stream.flush().await;
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_is_offered_exactly_while_it_is_accepted() {
    let b = Node::start(config(&[TCP])).await.expect("start B");
    let mut a_config = config(&[TCP]);
    a_config.bootstrap = vec![bootstrap(&b, "tcp")];
    let a = Node::start(a_config).await.expect("start A");
    let connection = a.handle().connect(b.peer_id()).await.expect("reach B");

    // Not accepted yet: refused during negotiation.
    let refused = round_trip(&a, &connection).await;
    assert!(refused.is_err(), "not accepted yet, but served");

    // Accepted: the connection, open before, offers it now.
    let server = serve_echo(&b);
    round_trip(&a, &connection)
        .await
        .expect("offered once accepted");

    // Queue dropped: refused again on the same connection.
    server.abort();
    let _ = server.await;
    let refused = round_trip(&a, &connection).await;
    assert!(refused.is_err(), "queue dropped, but served");

    // Accepted again: offered again.
    let _server = serve_echo(&b);
    round_trip(&a, &connection)
        .await
        .expect("offered once accepted again");
}
