//! The `punchgate` binary: flags → config → node, until Ctrl-C or SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use punchgate::{
    Node,
    cli::{Cli, LogFormat},
    identity::Origin,
};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line with the whole cause chain; no backtrace for a user's mistake.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let identity_path = cli.identity.clone();
    let (config, origin) = cli.into_config()?;
    let peer_id = config.peer_id();
    match origin {
        Origin::Created => {
            tracing::info!(%peer_id, path = %identity_path.display(), "generated new identity")
        }
        Origin::Loaded => {
            tracing::info!(%peer_id, path = %identity_path.display(), "loaded identity")
        }
    }

    let node = Node::start(config).await.context("cannot start the node")?;
    // Addresses a user can paste into another node's --bootstrap.
    println!("peer id: {peer_id}");
    for addr in node.listen_addrs() {
        println!("listening on {addr}/p2p/{peer_id}");
    }
    for addr in node.tunnel_addrs() {
        println!("tunnel listening on {addr}");
    }

    let handle = node.handle().clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, shutting down");
        handle.shutdown();
    });
    node.run_until_stopped().await;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; Ctrl-C still works");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
