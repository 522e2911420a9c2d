//! Who may reach what: per-service allow lists (deny by default), the peers a node trusts with
//! long relay circuits, and a rate-limited log of denials.
//!
//! An exposed service is reachable only by the peers its operator named (`--allow
//! SVC=PEER_ID[,PEER_ID...]`), or by every peer when the operator says so on purpose (`--allow
//! SVC=any`). A service with no rule is a configuration error, not an open door. Access is by
//! cryptographic identity: a peer id is the hash of the key that authenticated the connection,
//! so there is no shared secret to leak.
//!
//! A peer that is not allowed is refused exactly as a peer asking for a service that does not
//! exist ([`crate::tunnel::server`]), so a stranger cannot tell which services a node has.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt,
    str::FromStr,
    time::{Duration, Instant},
};

use libp2p::PeerId;

use crate::config::{ExposeSpec, ServiceName, SpecError};

/// Who may use a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    /// Every peer (`any`): an open service, on purpose.
    Any,
    /// Only these peers.
    Peers(BTreeSet<PeerId>),
}

impl Allow {
    /// Whether `peer` may use the service.
    pub fn admits(&self, peer: &PeerId) -> bool {
        match self {
            Allow::Any => true,
            Allow::Peers(peers) => peers.contains(peer),
        }
    }

    /// The peers named (none for [`Allow::Any`]).
    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        let peers = match self {
            Allow::Any => None,
            Allow::Peers(peers) => Some(peers.iter()),
        };
        peers.into_iter().flatten()
    }

    /// Adds the peers (or `any`) of `other`.
    fn merge(&mut self, other: Allow) {
        match (&mut *self, other) {
            (Allow::Any, _) => {}
            (_, Allow::Any) => *self = Allow::Any,
            (Allow::Peers(mine), Allow::Peers(theirs)) => mine.extend(theirs),
        }
    }
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allow::Any => f.write_str("any"),
            Allow::Peers(peers) => {
                let mut first = true;
                for peer in peers {
                    if !first {
                        f.write_str(",")?;
                    }
                    first = false;
                    write!(f, "{peer}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Allow {
    type Err = SpecError;

    /// `any`, or one or more peer ids separated by commas.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let expected = "'any' or PEER_ID[,PEER_ID...], e.g. 12D3KooW...,12D3KooW...";
        if s == "any" {
            return Ok(Allow::Any);
        }
        let mut peers = BTreeSet::new();
        for part in s.split(',') {
            let part = part.trim();
            let peer = part.parse::<PeerId>().map_err(|e| {
                SpecError::new(s, &format!("{expected}; '{part}' is not a peer id: {e}"))
            })?;
            peers.insert(peer);
        }
        Ok(Allow::Peers(peers))
    }
}

/// `--allow SVC=PEER_ID[,PEER_ID...]` or `--allow SVC=any`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowSpec {
    /// The exposed service the rule is for.
    pub service: ServiceName,
    /// Who may use it.
    pub allow: Allow,
}

impl fmt::Display for AllowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.service, self.allow)
    }
}

impl FromStr for AllowSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let expected = "SERVICE=PEER_ID[,PEER_ID...] or SERVICE=any, e.g. ssh=12D3KooW...";
        let (service, allow) = s
            .split_once('=')
            .ok_or_else(|| SpecError::new(s, &format!("{expected}; no '='")))?;
        let service = service.parse::<ServiceName>().map_err(|e: SpecError| {
            SpecError::new(s, &format!("{expected}; '{service}' is not {}", e.expected))
        })?;
        let allow = allow
            .parse::<Allow>()
            .map_err(|e: SpecError| SpecError::new(s, &format!("{expected}; {}", e.expected)))?;
        Ok(Self { service, allow })
    }
}

/// The allow rules do not fit the exposed services.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// A service is exposed with no rule: nobody could reach it, and reaching it by everyone
    /// must be asked for.
    #[error(
        "service '{0}' is exposed but no --allow rule names it: nobody may reach it. Add --allow {0}=PEER_ID[,PEER_ID...] (the peers that may use it; `punchgate --print-peer-id` on their machines prints their ids), or --allow {0}=any to open it to every peer"
    )]
    NoRule(ServiceName),
    /// A rule names a service that is not exposed (a typo, most likely).
    #[error(
        "--allow names service '{0}', which is not exposed (exposed: {1}); add --expose {0}=HOST:PORT (or --expose-udp) or fix the name"
    )]
    NotExposed(ServiceName, String),
    /// Two services share a name (TCP and UDP services share one set of names).
    #[error(
        "service '{0}' is exposed twice: each --expose and --expose-udp needs its own name (TCP and UDP services share names and --allow rules), e.g. {0} and {0}-udp"
    )]
    Duplicate(ServiceName),
}

/// Who may use each exposed service. Built with [`Access::new`], which checks that every
/// exposed service has a rule and every rule an exposed service.
#[derive(Debug, Clone, Default)]
pub struct Access {
    rules: HashMap<ServiceName, Allow>,
}

impl Access {
    /// Checks `allow` against `expose` (deny by default: every exposed service needs a rule).
    /// Several rules for one service add up.
    pub fn new(expose: &[ExposeSpec], allow: &[AllowSpec]) -> Result<Self, AccessError> {
        let mut exposed: HashSet<&ServiceName> = HashSet::new();
        for e in expose {
            if !exposed.insert(&e.name) {
                return Err(AccessError::Duplicate(e.name.clone()));
            }
        }
        let mut rules: HashMap<ServiceName, Allow> = HashMap::new();
        for spec in allow {
            if !exposed.contains(&spec.service) {
                let mut names: Vec<&str> = exposed.iter().map(|s| s.as_str()).collect();
                names.sort_unstable();
                let names = if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                };
                return Err(AccessError::NotExposed(spec.service.clone(), names));
            }
            match rules.get_mut(&spec.service) {
                Some(rule) => rule.merge(spec.allow.clone()),
                None => {
                    rules.insert(spec.service.clone(), spec.allow.clone());
                }
            }
        }
        for e in expose {
            if !rules.contains_key(&e.name) {
                return Err(AccessError::NoRule(e.name.clone()));
            }
        }
        Ok(Self { rules })
    }

    /// Whether `peer` may use `service`. `false` for a service with no rule.
    pub fn admits(&self, service: &ServiceName, peer: &PeerId) -> bool {
        self.rules.get(service).is_some_and(|r| r.admits(peer))
    }

    /// Whether some rule admits `peer` (it is named, or a service is open to every peer). A
    /// peer no rule names is refused whatever it asks for.
    pub fn names(&self, peer: &PeerId) -> bool {
        self.rules.values().any(|r| r.admits(peer))
    }

    /// Whether some rule names `peer` itself (a rule open to every peer does not count).
    pub fn names_explicitly(&self, peer: &PeerId) -> bool {
        self.rules
            .values()
            .any(|r| matches!(r, Allow::Peers(peers) if peers.contains(peer)))
    }

    /// The rule for `service`.
    pub fn rule(&self, service: &ServiceName) -> Option<&Allow> {
        self.rules.get(service)
    }
}

/// Who may use this node as a relay for long circuits (`--relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RelayMode {
    /// Long circuits for every pair of peers: an open bandwidth donor, on purpose.
    Any,
    /// Long circuits only when both ends are trusted (`--trust`, or named in an `--allow`
    /// rule); everyone else gets short circuits, enough to coordinate a hole punch.
    #[default]
    Trusted,
    /// No relaying at all: reservations and circuits are refused.
    Off,
}

impl RelayMode {
    /// `any`, `trusted` or `off`, as the flag takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayMode::Any => "any",
            RelayMode::Trusted => "trusted",
            RelayMode::Off => "off",
        }
    }
}

impl fmt::Display for RelayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to tell a user whose stream only a short relay circuit could carry: what the relay
/// allows, and which flags on which node would let it relay tunnels between `a` and `b`.
pub fn short_circuit_advice(
    relay: Option<PeerId>,
    limit: Option<&punchgate_machine::CircuitLimit>,
    a: PeerId,
    b: PeerId,
) -> String {
    let relay = relay.map_or_else(|| "the relay".to_owned(), |r| format!("relay {r}"));
    let grants = match limit {
        Some(limit) => format!("grants this circuit only {limit}"),
        None => "said nothing of this circuit's limits".to_owned(),
    };
    format!(
        "{relay} {grants}: enough to punch a hole, not to carry a tunnel (a relay gives long circuits only to peers its operator trusts), and no direct connection could be made. To relay tunnels between these peers, start {relay} with `--trust {a} --trust {b}` (or `--relay any`), or use a relay whose operator trusts both"
    )
}

/// At most one denial line per peer this often; the lines in between are counted and the count
/// goes on the next line.
pub const DENIAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Peers whose denials are tracked at once; the oldest is forgotten first.
const DENIAL_LOG_PEERS: usize = 1024;
/// Denial lines per [`DENIAL_LOG_INTERVAL`] across all peers: peer ids cost nothing to make, so
/// a flood from many identities is bounded too.
pub const DENIAL_LOG_LINES: u32 = 20;

/// Rate-limits log lines per peer and in total, so a flood of refusals cannot fill the log.
#[derive(Debug)]
pub struct DenialLog {
    /// Per peer: when its last line was written (if ever), when it was last seen, and how many
    /// lines were held back since its last one.
    peers: HashMap<PeerId, Tracked>,
    /// Lines across all peers.
    window: punchgate_machine::limit::Window,
}

impl Default for DenialLog {
    fn default() -> Self {
        Self {
            peers: HashMap::new(),
            window: punchgate_machine::limit::Window::new(DENIAL_LOG_LINES, DENIAL_LOG_INTERVAL),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Tracked {
    last_line: Option<Instant>,
    seen: Instant,
    held: u64,
}

impl DenialLog {
    /// Whether a line about `peer` should be written now; `Some(n)` with the `n` lines held back
    /// since the last one, `None` to hold this one back.
    pub fn admit(&mut self, peer: PeerId, now: Instant) -> Option<u64> {
        let tracked = match self.peers.get_mut(&peer) {
            Some(tracked) => tracked,
            None => {
                self.make_room(now);
                self.peers.entry(peer).or_insert(Tracked {
                    last_line: None,
                    seen: now,
                    held: 0,
                })
            }
        };
        tracked.seen = now;
        let recent = tracked
            .last_line
            .is_some_and(|t| now.duration_since(t) < DENIAL_LOG_INTERVAL);
        // The window counts only lines written: it is asked only for a peer not heard recently.
        if recent || !self.window.admit(now) {
            tracked.held += 1;
            return None;
        }
        let suppressed = tracked.held;
        tracked.held = 0;
        tracked.last_line = Some(now);
        Some(suppressed)
    }

    /// Keeps at most [`DENIAL_LOG_PEERS`] peers: forgets those seen longest ago.
    fn make_room(&mut self, now: Instant) {
        if self.peers.len() < DENIAL_LOG_PEERS {
            return;
        }
        self.peers
            .retain(|_, t| now.duration_since(t.seen) < DENIAL_LOG_INTERVAL);
        while self.peers.len() >= DENIAL_LOG_PEERS {
            let Some(oldest) = self
                .peers
                .iter()
                .min_by_key(|(_, t)| t.seen)
                .map(|(p, _)| *p)
            else {
                break;
            };
            self.peers.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

    fn expose(name: &str) -> ExposeSpec {
        format!("{name}=127.0.0.1:22").parse().expect("expose")
    }

    #[test]
    fn rules_parse_any_and_lists() {
        let a: AllowSpec = "ssh=any".parse().expect("valid");
        assert_eq!(a.allow, Allow::Any);
        let other = PeerId::random();
        let a: AllowSpec = format!("ssh={PEER},{other}").parse().expect("valid");
        assert!(a.allow.admits(&PEER.parse().expect("peer")));
        assert!(a.allow.admits(&other));
        assert!(!a.allow.admits(&PeerId::random()));
        assert_eq!(a.to_string().parse::<AllowSpec>().expect("round trip"), a);
    }

    #[test]
    fn bad_rules_name_the_value_and_the_form() {
        for (bad, why) in [
            ("ssh", "no '='"),
            ("ssh=", "is not a peer id"),
            ("ssh=nobody", "'nobody' is not a peer id"),
            ("s h=any", "service name"),
            ("ssh=any,12D3", "is not a peer id"),
        ] {
            let err = bad.parse::<AllowSpec>().expect_err(bad).to_string();
            assert!(err.contains(bad), "{err}");
            assert!(err.contains("SERVICE=PEER_ID"), "{err}");
            assert!(err.contains(why), "{err} should say {why}");
        }
    }

    #[test]
    fn deny_by_default_every_service_needs_a_rule() {
        let err = Access::new(&[expose("ssh")], &[]).expect_err("no rule");
        assert_eq!(err, AccessError::NoRule("ssh".parse().expect("name")));
        assert!(err.to_string().contains("--allow ssh="), "{err}");
        let err = Access::new(&[expose("ssh")], &["web=any".parse().expect("rule")])
            .expect_err("not exposed");
        assert!(err.to_string().contains("'web'"), "{err}");
        assert!(err.to_string().contains("exposed: ssh"), "{err}");
    }

    #[test]
    fn tcp_and_udp_services_share_names_and_rules() {
        let udp = ExposeSpec::udp("dns=127.0.0.1:53").expect("udp");
        let err = Access::new(
            &[expose("dns"), udp.clone()],
            &["dns=any".parse().expect("rule")],
        )
        .expect_err("one name twice");
        assert_eq!(err, AccessError::Duplicate("dns".parse().expect("name")));
        assert!(err.to_string().contains("--expose-udp"), "{err}");
        // A UDP service needs its rule like a TCP one.
        let err = Access::new(std::slice::from_ref(&udp), &[]).expect_err("no rule");
        assert_eq!(err, AccessError::NoRule("dns".parse().expect("name")));
        let peer = PeerId::random();
        let access =
            Access::new(&[udp], &[format!("dns={peer}").parse().expect("rule")]).expect("valid");
        assert!(access.admits(&"dns".parse().expect("name"), &peer));
        assert!(!access.admits(&"dns".parse().expect("name"), &PeerId::random()));
    }

    #[test]
    fn rules_add_up_and_name_trusted_peers() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut config = crate::NodeConfig::new(libp2p::identity::Keypair::generate_ed25519());
        config.expose = vec![expose("ssh"), expose("web")];
        config.allow = vec![
            format!("ssh={a}").parse().expect("rule"),
            format!("ssh={b}").parse().expect("rule"),
            "web=any".parse().expect("rule"),
        ];
        let trusted = PeerId::random();
        config.trust = vec![trusted];
        let access = config.access().expect("valid");
        let ssh = "ssh".parse().expect("name");
        let web = "web".parse().expect("name");
        assert!(access.admits(&ssh, &a) && access.admits(&ssh, &b));
        assert!(!access.admits(&ssh, &PeerId::random()));
        assert!(access.admits(&web, &PeerId::random()));
        assert!(!access.admits(&"nope".parse().expect("name"), &a));
        // Every peer named in a rule is trusted with long relay circuits, with --trust's.
        assert_eq!(config.trusted_peers(), HashSet::from([a, b, trusted]));
    }

    #[test]
    fn denial_lines_are_rate_limited_per_peer() {
        let mut log = DenialLog::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        assert_eq!(log.admit(a, t0), Some(0));
        assert_eq!(log.admit(a, t0 + Duration::from_millis(10)), None);
        assert_eq!(log.admit(a, t0 + Duration::from_millis(20)), None);
        // Another peer is not held back by the first.
        assert_eq!(log.admit(b, t0 + Duration::from_millis(30)), Some(0));
        // After the interval, the next line carries the count held back.
        assert_eq!(log.admit(a, t0 + DENIAL_LOG_INTERVAL), Some(2));
        // A flood of distinct peers stays bounded, in memory and in lines.
        let t1 = t0 + DENIAL_LOG_INTERVAL * 3;
        let written = (0..(DENIAL_LOG_PEERS * 2))
            .filter(|_| log.admit(PeerId::random(), t1).is_some())
            .count();
        assert_eq!(written, DENIAL_LOG_LINES as usize);
        assert!(log.peers.len() <= DENIAL_LOG_PEERS);
        // Once the window has passed, lines are written again.
        assert_eq!(log.admit(a, t1 + DENIAL_LOG_INTERVAL), Some(0));
    }
}
