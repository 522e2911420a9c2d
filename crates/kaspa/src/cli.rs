//! The `kaspa-p2p` program: a Punchgate node that runs Kaspa's P2P handshake as a server
//! (accepting `MessageStream` calls) or as a client (calling a peer).
//!
//! Configured like Kaspa's proof of concept, through environment variables, or with the
//! equivalent flags:
//!
//! | Variable | Flag | Mode | Meaning |
//! | --- | --- | --- | --- |
//! | `LIBP2P_LISTEN_MULTIADDRS` | `--listen` | both | Addresses to listen on; a `/p2p-circuit` address names a relay to use |
//! | `LIBP2P_RELAY_MULTIADDRS` | `--relay` | both | Relays (public peers) to join through and reserve on when private |
//! | `LIBP2P_REMOTE_PEER_ID` | `--remote-peer-id` | client | The server's peer id |
//! | `LIBP2P_REMOTE_MULTIADDRS` | `--remote-multiaddrs` | client | Addresses of the server, tried in order |
//! | `LIBP2P_ALLOW_PEERS` | `--allow` | server | Peers whose `MessageStream` calls are served, or `any` (required) |
//!
//! Lists are separated by commas or semicolons. The program exits 0 when the handshake
//! completes (a server with `--once` after its first one) and non-zero when it fails.
//!
//! # Who may call (deny by default)
//! A server serves only the peers it is told to: `--allow PEER_ID[,PEER_ID...]` (repeatable,
//! the values add up) or `--allow any` for every peer, on purpose. Without any, it refuses to
//! start (exit code 2, as for a malformed flag) rather than admit nobody or everybody.
//! `LIBP2P_ALLOW_PEERS` is not one of the proof of concept's variables; it is ours, in its
//! style. `kaspa-p2p peer-id` prints the peer id of an identity file (creating it if missing),
//! so a client's id can be learnt before it first runs. A caller that is not allowed gets a
//! closed stream and nothing else; the server logs the refusal (`peer not allowed`) and goes on
//! serving.

use std::{collections::BTreeSet, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use punchgate::{
    Node,
    access::Allow,
    cli::{LogFormat, NatArg, StopSignals, init_tracing, parse_duration},
    config::{BootstrapAddr, NatStatus, NodeConfig, SpecError},
    identity,
};
use punchgate_grpc::{BridgeConfig, ConnectOptions, Incoming, P2pConnectInfo, Target};
use tokio::sync::mpsc;

use crate::{
    handshake::{Local, Timeouts},
    service::{self, P2pService},
};

/// How long a client that completed its handshake waits for the server to end the call.
const HANG_UP: Duration = Duration::from_secs(2);

/// Kaspa's P2P handshake between two peers behind NAT, over Punchgate.
#[derive(Debug, Parser)]
#[command(name = "kaspa-p2p", version, about)]
pub struct Args {
    /// Server or client.
    #[command(subcommand)]
    pub mode: Mode,
    /// Key file holding this node's identity (created, mode 0600, if missing).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "kaspa-p2p.key",
        env = "KASPA_P2P_IDENTITY"
    )]
    pub identity: PathBuf,
    /// Addresses to listen on (comma or semicolon separated); circuit addresses name relays.
    #[arg(
        long,
        global = true,
        value_name = "MULTIADDRS",
        env = "LIBP2P_LISTEN_MULTIADDRS"
    )]
    pub listen: Option<String>,
    /// Relays to join through (comma or semicolon separated, each ending in /p2p/<PEER_ID>).
    #[arg(
        long,
        global = true,
        value_name = "MULTIADDRS",
        env = "LIBP2P_RELAY_MULTIADDRS"
    )]
    pub relay: Option<String>,
    /// Kaspa network name; both peers must agree.
    #[arg(long, global = true, default_value = "kaspa-mainnet")]
    pub network: String,
    /// Skip AutoNAT: private or public.
    #[arg(long, global = true, value_name = "STATUS")]
    pub nat_status: Option<NatArg>,
    /// Let AutoNAT work with private addresses (labs, private networks).
    #[arg(long, global = true)]
    pub autonat_private_ips: bool,
    /// Turn off mDNS.
    #[arg(long, global = true)]
    pub no_mdns: bool,
    /// Do not ask the router to forward our ports (UPnP IGD).
    #[arg(long, global = true)]
    pub no_upnp: bool,
    /// Log format on stderr.
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Accept `MessageStream` calls and run the handshake with every caller.
    Server {
        /// Exit (0) after the first completed handshake, non-zero if it fails.
        #[arg(long)]
        once: bool,
        /// Peers whose calls are served (comma or semicolon separated; repeatable, the values
        /// add up), or `any` to serve every peer. Required: deny by default.
        #[arg(
            long,
            value_name = "PEER_ID[,PEER_ID...]|any",
            env = "LIBP2P_ALLOW_PEERS",
            value_parser = parse_allow
        )]
        allow: Vec<Allow>,
    },
    /// Call a peer and run the handshake.
    Client {
        /// The server's peer id.
        #[arg(long, value_name = "PEER_ID", env = "LIBP2P_REMOTE_PEER_ID")]
        remote_peer_id: PeerId,
        /// The server's addresses, tried in order (comma or semicolon separated); without
        /// them the peer is looked up in the DHT.
        #[arg(long, value_name = "MULTIADDRS", env = "LIBP2P_REMOTE_MULTIADDRS")]
        remote_multiaddrs: Option<String>,
        /// How long to wait for a hole punch before the handshake goes over the relay.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        direct_wait: Duration,
    },
    /// Print the peer id of --identity (creating the key if missing) and exit: what a server's
    /// --allow names.
    PeerId,
}

/// The arguments do not fit together (exit code 2, as for a malformed flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// A server with no `--allow` would serve nobody; serving everybody must be asked for.
    #[error(
        "kaspa-p2p server serves nobody without --allow: add --allow PEER_ID[,PEER_ID...] (the peers that may call; `kaspa-p2p peer-id` prints a peer's id from its --identity file) or --allow any to serve every peer (or set LIBP2P_ALLOW_PEERS)"
    )]
    NoAllow,
}

impl Args {
    /// Checks what the parser cannot: a server names whom it serves.
    pub fn check(&self) -> Result<(), UsageError> {
        match &self.mode {
            Mode::Server { allow, .. } if allow.is_empty() => Err(UsageError::NoAllow),
            _ => Ok(()),
        }
    }
}

/// One `--allow` value: `any`, or peer ids separated by commas or semicolons.
fn parse_allow(s: &str) -> Result<Allow, SpecError> {
    s.replace(';', ",")
        .parse()
        .map_err(|e: SpecError| SpecError {
            value: s.to_owned(),
            ..e
        })
}

/// Every `--allow` value together: `any` if one is `any`, else all the peers they name;
/// `None` without any value.
pub fn allowed(values: &[Allow]) -> Option<Allow> {
    let mut peers = BTreeSet::new();
    for value in values {
        match value {
            Allow::Any => return Some(Allow::Any),
            Allow::Peers(named) => peers.extend(named.iter().copied()),
        }
    }
    (!values.is_empty()).then_some(Allow::Peers(peers))
}

/// A flag or variable does not have the expected form.
#[derive(Debug, thiserror::Error)]
#[error("{name}: '{value}' is not valid: {reason}")]
pub struct ListError {
    name: &'static str,
    value: String,
    reason: String,
}

/// Splits a comma- or semicolon-separated multiaddr list.
pub fn multiaddrs(name: &'static str, list: Option<&str>) -> Result<Vec<Multiaddr>, ListError> {
    list.unwrap_or("")
        .split([',', ';'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().map_err(|e: libp2p::multiaddr::Error| ListError {
                name,
                value: s.to_owned(),
                reason: format!("not a multiaddr ({e})"),
            })
        })
        .collect()
}

/// The relay named by an address ending in `/p2p/<relay>` (or `/p2p/<relay>/p2p-circuit`).
fn relay_bootstrap(name: &'static str, addr: &Multiaddr) -> Result<BootstrapAddr, ListError> {
    let mut relay_part = Multiaddr::empty();
    for p in addr.iter() {
        if p == Protocol::P2pCircuit {
            break;
        }
        relay_part.push(p);
    }
    relay_part
        .to_string()
        .parse()
        .map_err(|e: punchgate::config::SpecError| ListError {
            name,
            value: addr.to_string(),
            reason: e.expected,
        })
}

/// The node's config from the arguments.
fn node_config(
    args: &Args,
    direct_wait: Option<Duration>,
) -> Result<NodeConfig, Box<dyn std::error::Error>> {
    let (keypair, _) = identity::load_or_create(&args.identity)?;
    let mut config = NodeConfig::new(keypair);
    let mut listen = Vec::new();
    for addr in multiaddrs("LIBP2P_LISTEN_MULTIADDRS", args.listen.as_deref())? {
        if addr.iter().any(|p| p == Protocol::P2pCircuit) {
            config
                .bootstrap
                .push(relay_bootstrap("LIBP2P_LISTEN_MULTIADDRS", &addr)?);
        } else {
            listen.push(addr);
        }
    }
    if !listen.is_empty() {
        config.listen = listen;
    }
    for addr in multiaddrs("LIBP2P_RELAY_MULTIADDRS", args.relay.as_deref())? {
        config
            .bootstrap
            .push(relay_bootstrap("LIBP2P_RELAY_MULTIADDRS", &addr)?);
    }
    config.nat_override = args.nat_status.map(|n| match n {
        NatArg::Private => NatStatus::Private,
        NatArg::Public => NatStatus::Public,
    });
    config.autonat_private_ips = args.autonat_private_ips;
    config.mdns = !args.no_mdns;
    config.upnp = !args.no_upnp;
    if let Some(wait) = direct_wait {
        config.timing.direct_wait = wait;
    }
    Ok(config)
}

/// Runs the program; errors are printed as one line and give exit code 1, arguments that do
/// not fit together ([`UsageError`]) exit code 2.
pub fn run_main(args: Args) -> ExitCode {
    if let Mode::PeerId = args.mode {
        return punchgate::cli::print_peer_id(&args.identity);
    }
    // Before anything starts (and before a key file is created).
    if let Err(error) = args.check() {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    init_tracing(args.log_format);
    let result = tokio::runtime::Runtime::new()
        .map_err(|e| e.into())
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let direct_wait = match &args.mode {
        Mode::Client { direct_wait, .. } => Some(*direct_wait),
        Mode::Server { .. } | Mode::PeerId => None,
    };
    let config = node_config(&args, direct_wait)?;
    let connect_timeout = config.timing.connect_timeout;
    // Watched before the addresses are printed: a SIGTERM right after them stops us cleanly.
    let signals = StopSignals::watch();
    let node = Node::start(config).await?;
    let peer_id = node.peer_id();
    println!("peer id: {peer_id}");
    for addr in node.listen_addrs() {
        println!("listening on {addr}/p2p/{peer_id}");
    }
    let bridge = BridgeConfig::default();
    let local = Local::new(args.network.clone());
    let timeouts = Timeouts::default();
    let outcome = match args.mode {
        Mode::Server { once, allow } => {
            let allow = allowed(&allow).ok_or(UsageError::NoAllow)?;
            serve(&node, &bridge, allow, local, timeouts, once, signals).await
        }
        Mode::Client {
            remote_peer_id,
            remote_multiaddrs,
            ..
        } => {
            let addrs = multiaddrs("LIBP2P_REMOTE_MULTIADDRS", remote_multiaddrs.as_deref())?;
            let connected = reach(&node, remote_peer_id, addrs, connect_timeout).await;
            match connected {
                Ok(()) => call(&node, &bridge, remote_peer_id, &local, &timeouts).await,
                Err(error) => Err(error.into()),
            }
        }
        // Handled by `run_main`, without a node.
        Mode::PeerId => Ok(()),
    };
    node.shutdown().await;
    outcome
}

async fn serve(
    node: &Node,
    bridge: &BridgeConfig,
    allow: Allow,
    local: Local,
    timeouts: Timeouts,
    once: bool,
    mut signals: StopSignals,
) -> Result<(), Box<dyn std::error::Error>> {
    let (outcomes_tx, mut outcomes) = mpsc::channel(16);
    let allowed = allow.to_string();
    let incoming = Incoming::new(node.handle(), bridge, allow)?.refuse_duplicate_peers();
    let service = P2pService::new(local, timeouts, outcomes_tx).into_server(bridge);
    let stop = node.handle().clone();
    // Stopping the gRPC server first lets it deliver what its handlers sent (a Reject to a peer
    // on another network) before the node closes the connection under it.
    let (drain, drained) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(
        bridge
            .server()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                tokio::select! {
                    () = stop.stopped() => {}
                    _ = drained => {}
                }
            }),
    );
    tracing::info!(protocol = %bridge.protocol, allow = %allowed, "serving Kaspa P2P over libp2p");
    let result = loop {
        tokio::select! {
            outcome = outcomes.recv() => match outcome {
                Some(incoming) if once => break incoming.result.map(|_| ()).map_err(Into::into),
                Some(_) => {}
                None => break Ok(()),
            },
            () = signals.recv() => break Ok(()),
        }
    };
    let _ = drain.send(());
    let drained = tokio::time::timeout(SERVER_DRAIN, &mut server)
        .await
        .is_ok();
    node.handle().shutdown();
    if !drained {
        tracing::debug!(within = ?SERVER_DRAIN, "gRPC connections still open at shutdown");
        let _ = server.await;
    }
    result
}

/// How long a stopping server waits for its gRPC connections to finish before the node closes.
const SERVER_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Attempts each remote address gets before the next is tried.
const ATTEMPTS_PER_ADDR: u32 = 3;
/// The pause after a failed attempt, doubled after each.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Reaching the remote peer failed at every address.
#[derive(Debug, thiserror::Error)]
#[error("no remote multiaddr worked within {within:?}: {}", .tried.join("; "))]
struct ReachError {
    /// The whole budget.
    within: Duration,
    /// Each attempt, as `ADDR (attempt N): why`.
    tried: Vec<String>,
}

/// Tries the given addresses in order, as the proof of concept did, each a few times (a relay
/// or a punch may need a moment), all within `within` (the node's connect timeout).
async fn reach(
    node: &Node,
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    within: Duration,
) -> Result<(), ReachError> {
    let deadline = tokio::time::Instant::now() + within;
    let total = addrs.len();
    let mut tried = Vec::new();
    for (i, addr) in addrs.into_iter().enumerate() {
        let mut pause = FIRST_RETRY;
        for attempt in 1..=ATTEMPTS_PER_ADDR {
            tracing::info!(%addr, attempt, address = i + 1, of = total, "dialing remote multiaddr");
            let dial = node.handle().dial_addr(peer, addr.clone());
            match tokio::time::timeout_at(deadline, dial).await {
                Ok(Ok(info)) => {
                    tracing::info!(%addr, relayed = info.relayed, "connected to the remote peer");
                    return Ok(());
                }
                Ok(Err(error)) => {
                    tracing::warn!(%addr, attempt, %error, "remote multiaddr failed");
                    tried.push(format!("{addr} (attempt {attempt}): {error}"));
                }
                Err(_) => {
                    tried.push(format!("{addr} (attempt {attempt}): out of time"));
                    return Err(ReachError { within, tried });
                }
            }
            let now = tokio::time::Instant::now();
            if now + pause >= deadline {
                return Err(ReachError { within, tried });
            }
            if attempt < ATTEMPTS_PER_ADDR {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
    Err(ReachError { within, tried })
}

async fn call(
    node: &Node,
    bridge: &BridgeConfig,
    peer: PeerId,
    local: &Local,
    timeouts: &Timeouts,
) -> Result<(), Box<dyn std::error::Error>> {
    let path: Arc<std::sync::Mutex<Option<P2pConnectInfo>>> = Arc::default();
    let observer: punchgate_grpc::Observer = {
        let path = path.clone();
        Arc::new(move |info: &P2pConnectInfo| {
            *path.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.clone());
        })
    };
    let target = Target {
        peer,
        addrs: Vec::new(),
    };
    let options = ConnectOptions {
        relays: None,
        observer: Some(observer),
    };
    let channel = punchgate_grpc::connect_with(node.handle(), &target, bridge, options).await?;
    let info = path.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let relayed = info.as_ref().is_some_and(|i| i.relayed);
    tracing::info!(
        %peer,
        relay = relayed,
        path = if relayed { "relayed" } else { "direct" },
        remote_addr = %info.as_ref().map(|i| i.remote_addr.to_string()).unwrap_or_default(),
        "P2P, Client connected via libp2p"
    );
    let session = service::handshake(channel, bridge, local, timeouts).await?;
    tracing::info!(
        %peer,
        user_agent = %session.version.user_agent,
        path = if relayed { "relayed" } else { "direct" },
        "P2P handshake complete: Version, Verack, Ready"
    );
    if !session.close(HANG_UP).await {
        tracing::warn!(%peer, "the peer did not end the call cleanly; closing anyway");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: &str = "12D3KooWR2KSRQWyanR1dPvnZkXt296xgf3FFn8135szya3zYYwY";

    #[test]
    fn lists_split_on_commas_and_semicolons() {
        let list = format!(
            "/ip4/0.0.0.0/tcp/4012, /ip4/1.2.3.4/tcp/4011/p2p/{RELAY}/p2p-circuit;/ip4/10.0.0.1/tcp/1"
        );
        let addrs = multiaddrs("X", Some(&list)).expect("valid");
        assert_eq!(addrs.len(), 3);
        let err = multiaddrs("LIBP2P_REMOTE_MULTIADDRS", Some("/ip4/1.2.3.4/tcp/1,nope"))
            .expect_err("invalid")
            .to_string();
        assert!(
            err.starts_with("LIBP2P_REMOTE_MULTIADDRS: 'nope' is not valid"),
            "{err}"
        );
    }

    #[test]
    fn allow_values_add_up_and_any_wins() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let values = [
            parse_allow(&format!("{a}")).expect("one"),
            parse_allow(&format!("{b}; {a}")).expect("semicolons"),
        ];
        assert_eq!(allowed(&values), Some(Allow::Peers([a, b].into())));
        let values = [values[0].clone(), parse_allow("any").expect("any")];
        assert_eq!(allowed(&values), Some(Allow::Any));
        assert_eq!(allowed(&[]), None);
        let err = parse_allow("nobody;x").expect_err("bad").to_string();
        assert!(err.contains("'nobody;x'"), "{err}");
        assert!(err.contains("PEER_ID[,PEER_ID...]"), "{err}");
    }

    #[test]
    fn a_server_must_name_whom_it_serves() {
        let args = Args::try_parse_from(["kaspa-p2p", "server", "--once"]).expect("parses");
        // (Unless the environment names them.)
        if std::env::var_os("LIBP2P_ALLOW_PEERS").is_none() {
            let err = args.check().expect_err("no --allow").to_string();
            assert!(err.contains("--allow PEER_ID"), "{err}");
            assert!(err.contains("--allow any"), "{err}");
        }
        let peer = PeerId::random();
        let args = Args::try_parse_from([
            "kaspa-p2p",
            "server",
            "--allow",
            &peer.to_string(),
            "--allow",
            "any",
        ])
        .expect("parses");
        assert_eq!(args.check(), Ok(()));
        let err = Args::try_parse_from(["kaspa-p2p", "server", "--allow", "nobody"])
            .expect_err("not a peer id");
        assert_eq!(err.exit_code(), 2);
        let err = err.to_string();
        assert!(err.contains("--allow"), "{err}");
        assert!(err.contains("'nobody'"), "{err}");
        assert!(err.contains("PEER_ID[,PEER_ID...]"), "{err}");
    }

    #[test]
    fn a_circuit_listen_address_names_its_relay() {
        let addr: Multiaddr = format!("/ip4/1.2.3.4/tcp/4011/p2p/{RELAY}/p2p-circuit")
            .parse()
            .expect("addr");
        let b = relay_bootstrap("X", &addr).expect("relay");
        assert_eq!(b.peer.to_string(), RELAY);
        assert_eq!(
            b.addr.to_string(),
            format!("/ip4/1.2.3.4/tcp/4011/p2p/{RELAY}")
        );
        let err = relay_bootstrap(
            "LIBP2P_RELAY_MULTIADDRS",
            &"/ip4/1.2.3.4/tcp/4011".parse().expect("addr"),
        )
        .expect_err("no peer id")
        .to_string();
        assert!(err.contains("LIBP2P_RELAY_MULTIADDRS"), "{err}");
    }
}
