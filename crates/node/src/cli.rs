//! Command-line flags and their translation into a [`NodeConfig`].
//!
//! Every value is parsed into its typed form by clap, so a malformed value is reported as
//! `invalid value '<value>' for '--flag <FORM>': <what was expected>` before anything starts.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, ValueEnum};
use libp2p::Multiaddr;
use tracing_subscriber::EnvFilter;

use crate::{
    Node,
    access::{AccessError, AllowSpec, RelayMode},
    config::{
        BootstrapAddr, ExposeSpec, NatStatus, NodeConfig, RelayLimits, ServiceProtocol, Timing,
        TunnelSpec, default_listen_addrs,
    },
    identity::{self, IdentityError, Origin},
    node::StartError,
};

/// Punchgate: reach TCP and UDP services on machines behind NAT, peer to peer.
///
/// Every node is the same: it relays for others once public, reserves a relay slot when private,
/// punches holes with DCUtR (TCP and QUIC), finds peers through Kademlia and mDNS,
/// and exposes or consumes TCP and UDP tunnels.
#[derive(Debug, Parser)]
#[command(name = "punchgate", version, about, long_about)]
pub struct Cli {
    /// A TOML config file whose keys are these flags' long names (`listen = [...]`,
    /// `no-mdns = true`); flags given here override it. See examples/punchgate.toml.
    #[arg(long, value_name = "PATH", env = "PUNCHGATE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Check the configuration (flags and --config file) and exit: 0 if it is good, 2 if not.
    #[arg(long)]
    pub check_config: bool,

    /// Key file holding this node's identity (created, mode 0600, if missing). Default:
    /// identity.key in $STATE_DIRECTORY (systemd), else $XDG_DATA_HOME/punchgate, else
    /// ~/.local/share/punchgate.
    #[arg(long, value_name = "PATH", env = "PUNCHGATE_IDENTITY")]
    pub identity: Option<PathBuf>,

    /// Address to listen on (repeatable). Default: /ip4/0.0.0.0/tcp/0 and
    /// /ip4/0.0.0.0/udp/0/quic-v1.
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<Multiaddr>,

    /// Peer to join the mesh through, with its peer id (repeatable).
    #[arg(long, value_name = "MULTIADDR/p2p/PEER_ID")]
    pub bootstrap: Vec<BootstrapAddr>,

    /// Offer a local TCP service to the mesh under NAME (repeatable). Nobody may use it until an
    /// --allow rule names it.
    #[arg(long, value_name = "NAME=HOST:PORT")]
    pub expose: Vec<ExposeSpec>,

    /// Offer a local UDP service (WireGuard, DNS, a game server) to the mesh under NAME
    /// (repeatable). TCP and UDP services share names and --allow rules: nobody may use it until
    /// an --allow rule names it.
    #[arg(long, value_name = "NAME=HOST:PORT", value_parser = ExposeSpec::udp)]
    pub expose_udp: Vec<ExposeSpec>,

    /// Let these peers use exposed service SVC (repeatable; rules for one service add up).
    /// `SVC=any` opens it to every peer. Every exposed service needs a rule.
    #[arg(long, value_name = "SVC=PEER_ID[,PEER_ID...]|SVC=any")]
    pub allow: Vec<AllowSpec>,

    /// Trust this peer with long relay circuits (repeatable). Peers named in --allow are
    /// trusted too.
    #[arg(long, value_name = "PEER_ID")]
    pub trust: Vec<libp2p::PeerId>,

    /// Who may relay through this node with long circuits (--relay-circuit-duration,
    /// --relay-circuit-bytes): `trusted` (both ends trusted), `any` peer, or `off` (no relaying
    /// at all). Everyone else gets short circuits (2 min, 128 KiB): enough to punch a hole.
    #[arg(long, value_name = "MODE", default_value = "trusted")]
    pub relay: RelayMode,

    /// Print the peer id of --identity (creating the key if missing) and exit.
    #[arg(long)]
    pub print_peer_id: bool,

    /// Listen on BIND and carry each connection to service SVC of peer PEER (repeatable).
    #[arg(long, value_name = "PEER:SVC@BIND")]
    pub tunnel: Vec<TunnelSpec>,

    /// Listen for UDP on BIND and carry each client's datagrams to UDP service SVC of peer PEER
    /// (repeatable). Each client address is one session; replies go back to it.
    #[arg(long, value_name = "PEER:SVC@BIND", value_parser = TunnelSpec::udp)]
    pub tunnel_udp: Vec<TunnelSpec>,

    /// Skip AutoNAT and act as if behind NAT (private) or reachable (public).
    #[arg(long, value_name = "STATUS")]
    pub nat_status: Option<NatArg>,

    /// An address others can reach this node at, if you know it (repeatable). Confirms it
    /// without waiting for AutoNAT, and the node starts public: it relays for others and serves
    /// the DHT at once (AutoNAT may still find otherwise later).
    #[arg(long, value_name = "MULTIADDR")]
    pub external_address: Vec<Multiaddr>,

    /// Turn off mDNS discovery on the local network.
    #[arg(long)]
    pub no_mdns: bool,

    /// Do not ask the router to forward our ports (UPnP IGD). With it on (the default), a
    /// router that offers mapping makes this node reachable directly from behind any NAT.
    #[arg(long)]
    pub no_upnp: bool,

    /// Let AutoNAT probe and serve peers at private (non-global) addresses: for private
    /// networks and labs. Off on the internet, where such answers would be wrong.
    #[arg(long)]
    pub autonat_private_ips: bool,

    /// How long a new tunnel connection to a peer reached only through a relay waits for a
    /// hole punch before it uses the relay. A short relay circuit (see --relay) is never used:
    /// the connection waits for the punch until it fails, then is refused.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub direct_wait: Duration,

    /// Birthday punching (QUIC) towards a peer behind a symmetric NAT: sockets the hard side
    /// opens. 0 turns birthday punching off. Punches run only with peers --allow names by id
    /// (or --trust), for a peer we open tunnel or gRPC streams to that a relay alone reaches.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub punch_sockets: u16,

    /// Birthday punching: probes the easy side sends at most (random ports of the other side's
    /// address). 2048 probes against 256 sockets find a port 99.97% of the time.
    #[arg(long, value_name = "N", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(0..=16384))]
    pub punch_probes: u32,

    /// Birthday punching: packets per second either side sends (14-byte UDP probes).
    #[arg(long, value_name = "PPS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub punch_rate: u32,

    /// Birthday punching: punches per peer per minute, either side (0 turns punching off).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=60))]
    pub punch_attempts: u32,

    /// How long reaching a peer (dial, DHT lookup, relay) may take.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Publish the peer record after this long even if discovery has not finished. A node whose
    /// NAT status is still unknown then, and that no peer has dialled, acts as private: it
    /// reserves a relay slot (and says so in its log).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub discovery_timeout: Duration,

    /// Long relay circuits (see --relay) are closed after this long.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub relay_circuit_duration: Duration,

    /// Long relay circuits (see --relay) are closed after this many bytes.
    #[arg(long, value_name = "BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub relay_circuit_bytes: u64,

    /// Relay circuits open at once, across all peers.
    #[arg(long, value_name = "N", default_value_t = RelayLimits::default().max_circuits)]
    pub relay_max_circuits: usize,

    /// Relay circuits open at once per peer.
    #[arg(long, value_name = "N", default_value_t = RelayLimits::default().max_circuits_per_peer)]
    pub relay_max_circuits_per_peer: usize,

    /// Relay reservations held for others at once.
    #[arg(long, value_name = "N", default_value_t = RelayLimits::default().max_reservations)]
    pub relay_max_reservations: usize,

    /// Tunnel connections served (and, separately, carried) at once; more wait.
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tunnels: u32,

    /// Tunnel connections one peer may have served at once, so that no peer can take all of
    /// --max-tunnels; more from that peer are refused (they do not wait).
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tunnels_per_peer: u32,

    /// UDP sessions (client addresses) one --tunnel-udp port carries at once; a new client past
    /// it has its datagrams dropped (and counted) until a session ends.
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_MAX_UDP_SESSIONS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_udp_sessions: u32,

    /// Connections open at once, in total (direct and relayed, both directions); more are
    /// refused, with a rate-limited WARN.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Connections open at once to one peer; more are refused.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_peer: u32,

    /// Connections dialled to this node that are still in their handshakes; more are refused.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_incoming: u32,

    /// Inbound tunnel and gRPC streams one connection may have open at once (below the
    /// muxer's own limit of 2048); more are refused one by one, and the connection stays.
    #[arg(long, value_name = "N", default_value_t = crate::net::stream::DEFAULT_MAX_INBOUND_STREAMS as u32, value_parser = clap::value_parser!(u32).range(1..=1536))]
    pub max_streams_per_connection: u32,

    /// The memory ceiling: while the node's resident memory is above it, it accepts and makes
    /// no new connection (open ones keep working), and says so in a WARN line.
    #[arg(long, value_name = "BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub max_memory: u64,

    /// Close a tunnel connection that moves no byte either way for this long (for example
    /// 10m). Off by default: an idle SSH session stays up.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub tunnel_idle_timeout: Option<Duration>,

    /// End a UDP session (one client address of a --tunnel-udp port, or one served session of
    /// an --expose-udp service) that carries no datagram either way for this long. Each side
    /// uses its own setting.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub udp_idle_timeout: Duration,

    /// Serve Prometheus metrics on http://ADDR/metrics and a JSON status on /status (for
    /// example 127.0.0.1:9090). Keep it on loopback or a management network: the status names
    /// services and peers.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Log format on stderr.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// `--nat-status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NatArg {
    /// Behind NAT: reserve a relay slot at once.
    Private,
    /// Reachable: do not reserve a relay slot.
    Public,
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for scripts.
    Json,
}

/// Turning flags into a config failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The identity file could not be used.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The --allow rules do not fit the --expose flags.
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// Running the binary failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The flags could not be turned into a config.
    #[error(transparent)]
    Cli(#[from] CliError),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The node could not start.
    #[error("cannot start the node: {0}")]
    Start(#[from] Box<StartError>),
}

/// The `punchgate` binary: logging, the node, and a clean stop on Ctrl-C or SIGTERM. Errors are
/// printed as one line (no backtrace: they are the user's to fix) and give exit code 1; flags
/// that do not fit together (an --expose without an --allow rule) give exit code 2, like a
/// malformed flag.
pub fn run_main(cli: Cli) -> ExitCode {
    if cli.print_peer_id {
        return print_peer_id(&cli.identity_path());
    }
    // Check the rules before anything starts (and before a key file is created).
    if let Err(error) = crate::access::Access::new(&cli.services(), &cli.allow) {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    if cli.check_config {
        println!(
            "configuration is valid: {} listen address(es), {} exposed service(s), {} tunnel(s); identity {}",
            cli.listen.len(),
            cli.expose.len() + cli.expose_udp.len(),
            cli.tunnel.len() + cli.tunnel_udp.len(),
            cli.identity_path().display()
        );
        return ExitCode::SUCCESS;
    }
    init_tracing(cli.log_format);
    raise_fd_limit();
    let result = tokio::runtime::Runtime::new()
        .map_err(RunError::Runtime)
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), RunError> {
    let identity_path = cli.identity_path();
    let (config, origin) = cli.into_config()?;
    let peer_id = config.peer_id();
    let path = identity_path.display();
    match origin {
        Origin::Created => tracing::info!(%peer_id, %path, "generated new identity"),
        Origin::Loaded => tracing::info!(%peer_id, %path, "loaded identity"),
    }
    // The default used to be ./identity.key: say so when one is there and not used.
    let old = std::path::Path::new("identity.key");
    if old.is_file()
        && std::fs::canonicalize(old).ok() != std::fs::canonicalize(&identity_path).ok()
    {
        tracing::warn!(
            unused = %old.display(),
            %path,
            hint = "pass --identity identity.key (or move the file) to stay the peer that key is",
            "an identity.key in the current directory is not this node's identity: the default moved to a data directory"
        );
    }

    if let Ok(access) = config.access() {
        for expose in &config.expose {
            match access.rule(&expose.name) {
                Some(crate::access::Allow::Any) => tracing::warn!(
                    service = %expose.name,
                    target = %expose.target,
                    protocol = %expose.protocol,
                    "service open to every peer (--allow {}=any)",
                    expose.name
                ),
                Some(rule) => tracing::info!(
                    service = %expose.name,
                    target = %expose.target,
                    protocol = %expose.protocol,
                    allowed = %rule,
                    "service exposed to the allowed peers only"
                ),
                None => {}
            }
        }
    }
    tracing::info!(relay = %config.relay_mode, trusted = config.trusted_peers().len(), "relay policy");
    let long = punchgate_machine::CircuitLimit {
        duration: Some(config.relay.circuit_duration),
        bytes: Some(config.relay.circuit_bytes),
    };
    if config.relay_mode != RelayMode::Off && long.is_short() {
        tracing::warn!(
            limit = %long,
            min_duration = ?punchgate_machine::paths::MIN_STREAM_CIRCUIT_DURATION,
            min_bytes = punchgate_machine::paths::MIN_STREAM_CIRCUIT_BYTES,
            "--relay-circuit-duration / --relay-circuit-bytes are below what a node rides a tunnel on: the long circuits this node grants will carry no tunnel"
        );
    }
    // Watch for signals before printing the addresses: a supervisor (or a test) that reads them
    // and at once sends SIGTERM must get a clean stop, not the default action.
    let mut signals = StopSignals::watch();
    let mut hangups = watch_hangups();
    let mut node = Node::start(config).await.map_err(Box::new)?;
    // Addresses a user can paste into another node's --bootstrap.
    println!("peer id: {peer_id}");
    println!("identity: {}", identity_path.display());
    for addr in node.listen_addrs() {
        println!("listening on {addr}/p2p/{peer_id}");
    }
    for (spec, addr) in node.tunnel_listeners() {
        match spec.protocol {
            ServiceProtocol::Tcp => println!("tunnel listening on {addr}"),
            ServiceProtocol::Udp => println!("udp tunnel listening on {addr}"),
        }
    }
    if let Some(addr) = node.metrics_addr() {
        println!("metrics on http://{addr}/metrics, status on http://{addr}/status");
    }

    let handle = node.handle().clone();
    loop {
        tokio::select! {
            () = signals.recv() => {
                tracing::info!("signal received, shutting down");
                break;
            }
            Some(()) = next_hangup(&mut hangups) => reload(&mut node, &identity_path).await,
            () = handle.stopped() => break,
        }
    }
    node.shutdown().await;
    Ok(())
}

/// SIGHUP, watched from start (a hang-up before the node is up is kept, not the default
/// action, which would end the process).
fn watch_hangups() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGHUP: the configuration cannot be reloaded");
            None
        }
    }
}

async fn next_hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// SIGHUP: reads the command line's `--config` file again and applies its services, `--allow`
/// rules and `--tunnel` ports ([`Node::reload`]). A file with an error is reported and
/// changes nothing: the node keeps running as it was.
async fn reload(node: &mut Node, identity_path: &std::path::Path) {
    tracing::info!("SIGHUP: reloading the configuration");
    let cli = match crate::config_file::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(error) => {
            let error = match error {
                crate::config_file::ParseError::Flags(e) => e.to_string(),
                crate::config_file::ParseError::File(e) => e.to_string(),
            };
            tracing::warn!(error = %error.trim_end(), "reload failed, the configuration in use is unchanged");
            return;
        }
    };
    if cli.identity_path() != identity_path {
        tracing::warn!(
            from = %identity_path.display(),
            to = %cli.identity_path().display(),
            "the identity changed in the configuration: it takes effect at the next start"
        );
    }
    let config = match cli.into_config() {
        Ok((config, _)) => config,
        Err(error) => {
            tracing::warn!(%error, "reload failed, the configuration in use is unchanged");
            return;
        }
    };
    match node.reload(&config).await {
        Ok(report) => tracing::info!(
            services = report.services.0,
            tunnels_added = report.tunnels_added.len(),
            tunnels_removed = report.tunnels_removed.len(),
            tunnels_closed = report.tunnels_closed.len(),
            tunnel_errors = report.tunnel_errors.len(),
            "configuration reloaded: services, --allow rules and --tunnel ports (other settings take effect at the next start)"
        ),
        Err(error) => {
            tracing::warn!(%error, "reload failed, the configuration in use is unchanged");
        }
    }
}

/// `--print-peer-id`: prints the peer id of the key file at `path` (created if missing) on
/// stdout; exit code 1 with the reason on stderr when the file cannot be used.
pub fn print_peer_id(path: &std::path::Path) -> ExitCode {
    match identity::load_or_create(path) {
        Ok((keypair, _)) => {
            println!("{}", keypair.public().to_peer_id());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Every tunnelled connection holds a socket on each side: lift the soft limit on open files to
/// the hard limit (often 1024 soft, far more hard), as network daemons do.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(error) => tracing::warn!(%error, soft, "cannot raise the open-file limit"),
        },
        Ok((soft, _)) => tracing::debug!(limit = soft, "open-file limit"),
        Err(error) => tracing::warn!(%error, "cannot read the open-file limit"),
    }
}

/// Ctrl-C or SIGTERM, watched from the moment this is created (a signal that arrives before
/// [`StopSignals::recv`] is polled is kept, not lost, and never takes the default action).
#[derive(Debug)]
pub struct StopSignals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Starts watching. Call it inside the Tokio runtime, before telling anyone the process is up.
    pub fn watch() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let watch = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, signal = name, "cannot watch the signal");
                None
            }
        };
        Self {
            interrupt: watch(SignalKind::interrupt(), "SIGINT"),
            terminate: watch(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// Waits for the next Ctrl-C or SIGTERM.
    pub async fn recv(&mut self) {
        async fn next(signal: Option<&mut tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(self.interrupt.as_mut()) => {}
            _ = next(self.terminate.as_mut()) => {}
        }
    }
}

/// The `punchgate` binary's entry: the command line and its `--config` file, then
/// [`run_main`]. A bad flag exits as clap does (2, with usage); a bad config file exits 2 with
/// one line naming the file, the line, the key and what is expected.
pub fn main() -> ExitCode {
    match crate::config_file::parse(std::env::args_os()) {
        Ok(cli) => run_main(cli),
        Err(crate::config_file::ParseError::Flags(error)) => error.exit(),
        Err(crate::config_file::ParseError::File(error)) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr at `RUST_LOG` (default `info`), as text or JSON lines.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

impl Cli {
    /// The identity key file: `--identity`, or [`identity::default_path`].
    pub fn identity_path(&self) -> PathBuf {
        self.identity.clone().unwrap_or_else(identity::default_path)
    }

    /// The exposed services: `--expose` (TCP), then `--expose-udp`.
    pub fn services(&self) -> Vec<ExposeSpec> {
        self.expose
            .iter()
            .chain(&self.expose_udp)
            .cloned()
            .collect()
    }

    /// Loads (or creates) the identity and builds the node's config.
    pub fn into_config(self) -> Result<(NodeConfig, Origin), CliError> {
        let (keypair, origin) = identity::load_or_create(&self.identity_path())?;
        let mut config = NodeConfig::new(keypair);
        config.listen = if self.listen.is_empty() {
            default_listen_addrs()
        } else {
            self.listen
        };
        config.bootstrap = self.bootstrap;
        config.expose = self.expose;
        config.expose.extend(self.expose_udp);
        config.allow = self.allow;
        config.access()?;
        config.trust = self.trust;
        config.relay_mode = self.relay;
        config.tunnels = self.tunnel;
        config.tunnels.extend(self.tunnel_udp);
        config.nat_override = self.nat_status.map(|n| match n {
            NatArg::Private => NatStatus::Private,
            NatArg::Public => NatStatus::Public,
        });
        config.external_addresses = self.external_address;
        config.mdns = cfg!(feature = "mdns") && !self.no_mdns;
        config.upnp = !self.no_upnp;
        config.autonat_private_ips = self.autonat_private_ips;
        config.relay = RelayLimits {
            max_reservations: self.relay_max_reservations,
            max_circuits: self.relay_max_circuits,
            max_circuits_per_peer: self.relay_max_circuits_per_peer,
            circuit_duration: self.relay_circuit_duration,
            circuit_bytes: self.relay_circuit_bytes,
        };
        config.timing = Timing {
            discovery_timeout: self.discovery_timeout,
            direct_wait: self.direct_wait,
            connect_timeout: self.connect_timeout,
            tunnel_idle_timeout: self.tunnel_idle_timeout,
            udp_idle_timeout: self.udp_idle_timeout,
            ..Timing::default()
        };
        config.max_tunnels = self.max_tunnels as usize;
        config.max_tunnels_per_peer = self.max_tunnels_per_peer as usize;
        config.max_udp_sessions = self.max_udp_sessions as usize;
        config.punch = crate::punch::PunchConfig {
            sockets: self.punch_sockets,
            probes: self.punch_probes,
            rate: self.punch_rate,
            attempts_per_minute: self.punch_attempts,
        };
        config.max_connections = self.max_connections;
        config.max_connections_per_peer = self.max_connections_per_peer;
        config.max_streams_per_connection = self.max_streams_per_connection as usize;
        config.max_memory = self.max_memory;
        config.metrics = self.metrics;
        config.max_pending_incoming = self.max_pending_incoming;
        Ok((config, origin))
    }
}

/// [`parse_duration`], and more than zero (a timeout of zero would fire at once).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).and_then(|d| {
        if d.is_zero() {
            Err(format!("'{s}' is zero: give a duration above 0, e.g. 10m"))
        } else {
            Ok(d)
        }
    })
}

/// `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_unbounded(s).and_then(|d| {
        if d > crate::config::MAX_DURATION {
            Err(format!(
                "'{s}' is longer than any duration a node takes: at most {}h (a year)",
                crate::config::MAX_DURATION.as_secs() / 3600
            ))
        } else {
            Ok(d)
        }
    })
}

fn parse_duration_unbounded(s: &str) -> Result<Duration, String> {
    let expected = || {
        format!("'{s}' is not a duration: expected e.g. 500ms, 30s, 2m, 1h or a number of seconds")
    };
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| expected())?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(expected()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| expected())
}

/// `1GiB`, `512MiB`, `64KiB`, `1GB`, or a bare number of bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let expected =
        || format!("'{s}' is not a size: expected e.g. 1GiB, 512MiB, 64KiB or a number of bytes");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: u64 = number.parse().map_err(|_| expected())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(expected()),
    };
    match value.checked_mul(factor) {
        Some(0) => Err(format!("'{s}' is zero: a circuit needs at least one byte")),
        Some(bytes) => Ok(bytes),
        None => Err(expected()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("punchgate").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_listen_on_tcp_and_quic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("k");
        let cli = parse(&["--identity", key.to_str().expect("utf-8")]).expect("parse");
        let (config, origin) = cli.into_config().expect("config");
        assert_eq!(origin, Origin::Created);
        assert_eq!(config.listen, default_listen_addrs());
        assert_eq!(config.timing.direct_wait, Duration::from_secs(3));
        assert_eq!(config.relay.circuit_bytes, 1 << 30);
    }

    #[test]
    fn bad_values_name_the_flag_the_value_and_the_form() {
        let cases: &[(&[&str], &str, &str)] = &[
            (&["--expose", "ssh"], "--expose", "NAME=HOST:PORT"),
            (&["--tunnel", "x:y"], "--tunnel", "PEER_ID:SERVICE@BIND"),
            (
                &["--bootstrap", "/ip4/1.2.3.4/tcp/1"],
                "--bootstrap",
                "/p2p/<PEER_ID>",
            ),
            (
                &["--listen", "localhost:4001"],
                "--listen",
                "localhost:4001",
            ),
            (&["--nat-status", "maybe"], "--nat-status", "private"),
            (&["--direct-wait", "soon"], "--direct-wait", "500ms"),
            (
                &["--relay-circuit-bytes", "lots"],
                "--relay-circuit-bytes",
                "1GiB",
            ),
            (&["--max-tunnels", "0"], "--max-tunnels", "0"),
            (&["--allow", "ssh"], "--allow", "SERVICE=PEER_ID"),
            (&["--trust", "bob"], "--trust", "bob"),
            (&["--relay", "maybe"], "--relay", "trusted"),
        ];
        for (args, flag, form) in cases {
            let err = parse(args).expect_err("invalid").to_string();
            assert!(err.contains(flag), "{err}");
            assert!(err.contains(args[1]), "{err}");
            assert!(err.contains(form), "{err}");
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1d").is_err());
        // libp2p-relay keeps a circuit's duration in u32 seconds and panics past it; an
        // `Instant` plus a huge timeout panics too. Every duration flag stops at a year.
        assert_eq!(parse_duration("8760h"), Ok(crate::config::MAX_DURATION));
        let error = parse_duration("8761h").expect_err("over a year");
        assert!(error.contains("at most 8760h"), "{error}");
        assert!(parse_duration("5000000000").is_err());
        assert!(parse(&["--relay-circuit-duration", "1193047h"]).is_err());
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("99999999999TiB").is_err());
    }

    #[test]
    fn corrupt_identity_is_reported_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("k");
        std::fs::write(&key, b"garbage").expect("write");
        let cli = parse(&["--identity", key.to_str().expect("utf-8")]).expect("parse");
        let err = cli.into_config().expect_err("corrupt").to_string();
        assert!(err.contains("not a libp2p keypair"), "{err}");
        assert_eq!(std::fs::read(&key).expect("read"), b"garbage");
    }
}
