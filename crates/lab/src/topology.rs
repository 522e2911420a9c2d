//! A cell's network: an internet exchange, a public relay, and peers A and B behind their NATs.
//!
//! ```text
//!                        internet exchange (198.18.0.0/24)
//!        ┌─────────────────────┼──────────────────────┐
//!   dc (no NAT)          site of A (NAT)         site of B (NAT)
//!        │                     │                      │
//!   relay R (public)        peer A                 peer B + echo service
//! ```
//!
//! [`Scenario::DoubleNat`] puts B's home router behind a carrier-grade NAT; [`Scenario::SameNat`]
//! puts A and B behind one router. Every NAT router is [hardened](crate::nat::harden). With a
//! delay, every site router's WAN egress is [delayed](crate::delay::Delay): a packet is delayed
//! once, leaving its own site, so the round trip between A and B (direct or through the relay)
//! is twice the one-way delay.

use std::{fmt, time::Duration};

use anyhow::{Context as _, Result};
use patchbay::{Device, IpSupport, Lab, Nat, Router};
use serde::{Deserialize, Serialize};

use crate::{
    delay::Delay,
    nat::{self, NatKind},
};

/// Where A and B sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scenario {
    /// A and B behind separate NATs of the given kinds.
    Pair {
        /// A's NAT.
        a: NatKind,
        /// B's NAT.
        b: NatKind,
    },
    /// B behind a home NAT behind a carrier-grade NAT (both endpoint-independent); A behind a
    /// home NAT.
    DoubleNat,
    /// A and B behind the same home NAT.
    SameNat,
    /// A and B behind separate NATs of the given kinds, and the router of the peer `mapped`
    /// names runs a UPnP IGD daemon ([miniupnpd](crate::upnp)) that its peer asks for port
    /// mappings.
    Upnp {
        /// A's NAT.
        a: NatKind,
        /// B's NAT.
        b: NatKind,
        /// Whose router maps ports.
        mapped: Side,
    },
}

/// One of the two peers of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Peer A, the tunnel client.
    A,
    /// Peer B, the service.
    B,
}

impl Scenario {
    /// Whether A and B should end up with a direct connection over `transport`.
    pub fn expect_direct(self, transport: crate::cell::Transport) -> bool {
        let quic = transport == crate::cell::Transport::Quic;
        match self {
            Scenario::Pair { a, b } => {
                nat::expect_direct(a, b) || (quic && nat::birthday_fits(a, b))
            }
            // A peer the router forwards to is dialled directly from behind any NAT.
            Scenario::DoubleNat | Scenario::SameNat | Scenario::Upnp { .. } => true,
        }
    }

    /// Every scenario of the matrix: the nine NAT pairs, double NAT, same NAT.
    pub fn matrix() -> Vec<Scenario> {
        let mut all = Vec::new();
        for a in NatKind::ALL {
            for b in NatKind::ALL {
                all.push(Scenario::Pair { a, b });
            }
        }
        all.push(Scenario::DoubleNat);
        all.push(Scenario::SameNat);
        all.extend(Self::upnp());
        all
    }

    /// The port-mapping cells: a Moderate router that maps ports (UPnP) against a Strict NAT
    /// that no punch gets through, both ways round.
    pub fn upnp() -> [Scenario; 2] {
        use NatKind::{Moderate, Strict};
        [
            Scenario::Upnp {
                a: Moderate,
                b: Strict,
                mapped: Side::A,
            },
            Scenario::Upnp {
                a: Strict,
                b: Moderate,
                mapped: Side::B,
            },
        ]
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scenario::Pair { a, b } => write!(f, "{a} x {b}"),
            Scenario::DoubleNat => f.write_str("double NAT"),
            Scenario::SameNat => f.write_str("same NAT"),
            Scenario::Upnp { a, b, mapped } => match mapped {
                Side::A => write!(f, "{a}+UPnP x {b}"),
                Side::B => write!(f, "{a} x {b}+UPnP"),
            },
        }
    }
}

/// A built network. Dropping it tears everything down.
pub struct Network {
    /// The patchbay lab; owns the namespaces.
    pub lab: Lab,
    /// The public relay's device.
    pub relay: Device,
    /// Peer A's device (the tunnel client).
    pub a: Device,
    /// Peer B's device (exposes the echo service).
    pub b: Device,
    /// Every router, for inspection.
    pub routers: Vec<Router>,
    /// Delay threads; stopped on drop (before the lab).
    delays: Vec<Delay>,
    /// UPnP daemons on routers; stopped on drop (before the lab).
    upnp: Vec<crate::upnp::Daemon>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("relay", &self.relay.ip())
            .field("a", &self.a.ip())
            .field("b", &self.b.ip())
            .field("delays", &self.delays)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// The relay's public IPv4 address.
    pub fn relay_ip(&self) -> Result<std::net::Ipv4Addr> {
        self.relay.ip().context("relay has no IPv4 address")
    }

    /// The one-way delay per site, if any.
    pub fn one_way_delay(&self) -> Option<Duration> {
        self.delays.first().map(|d| d.one_way)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.delays.clear();
        self.upnp.clear();
    }
}

/// Builds the network for `scenario`, with `one_way` delay on every site's WAN if given.
pub async fn build(scenario: Scenario, one_way: Option<Duration>) -> Result<Network> {
    let lab = Lab::new()
        .await
        .context("cannot create the lab (root or user namespaces needed)")?;
    let dc = router(&lab, "dc", None, None).await?;
    let relay = lab
        .add_device("relay")
        .iface("eth0", dc.id())
        .build()
        .await?;

    let mut sites = Vec::new();
    let mut routers = vec![dc];
    let mut upnp = Vec::new();
    let (a, b) = match scenario {
        Scenario::Pair { a: nat_a, b: nat_b }
        | Scenario::Upnp {
            a: nat_a, b: nat_b, ..
        } => {
            let site_a = router(&lab, "site-a", Some(nat_a), None).await?;
            let site_b = router(&lab, "site-b", Some(nat_b), None).await?;
            let a = lab
                .add_device("peer-a")
                .iface("eth0", site_a.id())
                .build()
                .await?;
            let b = lab
                .add_device("peer-b")
                .iface("eth0", site_b.id())
                .build()
                .await?;
            if let Scenario::Upnp { mapped, .. } = scenario {
                let (router, other) = match mapped {
                    Side::A => (&site_a, &site_b),
                    Side::B => (&site_b, &site_a),
                };
                upnp.push(crate::upnp::Daemon::start(router, &[&routers[0], other])?);
            }
            sites.extend([site_a.clone(), site_b.clone()]);
            routers.extend([site_a, site_b]);
            (a, b)
        }
        Scenario::DoubleNat => {
            let site_a = router(&lab, "home-a", Some(NatKind::Moderate), None).await?;
            let cgnat = router(&lab, "cgnat", Some(NatKind::Moderate), None).await?;
            let home_b = router(&lab, "home-b", Some(NatKind::Moderate), Some(&cgnat)).await?;
            let a = lab
                .add_device("peer-a")
                .iface("eth0", site_a.id())
                .build()
                .await?;
            let b = lab
                .add_device("peer-b")
                .iface("eth0", home_b.id())
                .build()
                .await?;
            sites.extend([site_a.clone(), cgnat.clone()]);
            routers.extend([site_a, cgnat, home_b]);
            (a, b)
        }
        Scenario::SameNat => {
            let home = router(&lab, "home", Some(NatKind::Moderate), None).await?;
            let a = lab
                .add_device("peer-a")
                .iface("eth0", home.id())
                .build()
                .await?;
            let b = lab
                .add_device("peer-b")
                .iface("eth0", home.id())
                .build()
                .await?;
            sites.push(home.clone());
            routers.push(home);
            (a, b)
        }
    };

    let mut delays = Vec::new();
    if let Some(one_way) = one_way.filter(|d| !d.is_zero()) {
        for site in &sites {
            delays.push(Delay::start(site, one_way)?);
        }
    }
    Ok(Network {
        lab,
        relay,
        a,
        b,
        routers,
        delays,
        upnp,
    })
}

/// An IPv4-only router: on the exchange, or behind `upstream`; NAT'd and hardened if `nat` is
/// set, a public (no NAT) router otherwise.
async fn router(
    lab: &Lab,
    name: &str,
    nat: Option<NatKind>,
    upstream: Option<&Router>,
) -> Result<Router> {
    let mut builder = lab
        .add_router(name)
        .ip_support(IpSupport::V4Only)
        .nat(nat.map_or(Nat::None, NatKind::patchbay));
    if let Some(up) = upstream {
        builder = builder.upstream(up.id());
    }
    let router = builder.build().await?;
    if nat.is_some() {
        nat::harden(&router, nat)?;
    }
    Ok(router)
}
