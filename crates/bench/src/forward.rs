//! A plain TCP forwarder of the tunnel's shape, the measured limit for a tunnel of that shape
//! on this machine: two processes (this executable run as `forward`) between the client and the
//! service, each copying bytes both ways as the tunnel does (`punchgate::tunnel::splice`, with
//! its buffers), no cipher, no multiplexing. client → A → B → service crosses the same three
//! loopback hops as client → tunnel node → service node → service.

use std::{net::SocketAddr, path::Path, process::Command};

use anyhow::{Result, bail};
use tokio::net::{TcpListener, TcpStream};

use crate::nodes::Process;

/// Listens on one 127.0.0.1 port per target, prints `forwarding on <addr>` for each (in the
/// targets' order), and forwards every connection until stdin closes.
pub(crate) async fn serve(targets: Vec<SocketAddr>) -> Result<()> {
    for target in targets {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("forwarding on {}", listener.local_addr()?);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut service) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = service.set_nodelay(true);
                    let _ = punchgate::tunnel::splice::splice(&mut client, &mut service).await;
                });
            }
        });
    }
    // Until the benchmark closes our stdin (or is gone).
    let mut stdin = tokio::io::stdin();
    let _ = tokio::io::copy(&mut stdin, &mut tokio::io::sink()).await;
    Ok(())
}

/// B forwarding to `echo` and `sink`, A forwarding to B.
#[derive(Debug)]
pub(crate) struct Chain {
    /// Next to the services.
    pub(crate) service: Process,
    /// Next to the client.
    pub(crate) client: Process,
    /// A's port for the echo.
    pub(crate) echo: SocketAddr,
    /// A's port for the sink.
    pub(crate) sink: SocketAddr,
}

/// Starts the two forwarders in front of `echo` and `sink`.
pub(crate) fn start(bin: &Path, dir: &Path, echo: SocketAddr, sink: SocketAddr) -> Result<Chain> {
    let (service, [b_echo, b_sink]) = forwarder(bin, dir, "forward-service", [echo, sink])?;
    let (client, [echo, sink]) = forwarder(bin, dir, "forward-client", [b_echo, b_sink])?;
    Ok(Chain {
        service,
        client,
        echo,
        sink,
    })
}

fn forwarder(
    bin: &Path,
    dir: &Path,
    name: &str,
    targets: [SocketAddr; 2],
) -> Result<(Process, [SocketAddr; 2])> {
    let mut command = Command::new(bin);
    command.arg("forward").args(targets.map(|t| t.to_string()));
    let process = Process::start(command, dir, name, |lines| {
        lines
            .iter()
            .filter(|l| l.starts_with("forwarding on"))
            .count()
            >= 2
    })?;
    let ports: Vec<SocketAddr> = process
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix("forwarding on "))
        .filter_map(|a| a.parse().ok())
        .collect();
    let [echo, sink] = ports[..] else {
        bail!("forwarder {name} printed no two ports");
    };
    Ok((process, [echo, sink]))
}
