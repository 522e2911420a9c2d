//! NAT kinds, what each does, and the rules that make patchbay's routers behave like real ones.
//!
//! patchbay builds the NAT with nftables. Two gaps matter for hole punching, and
//! [`harden`] closes them after the router is built:
//!
//! - patchbay filters only on the forward hook. Unsolicited packets addressed to the router
//!   itself reach its own stack, which answers a peer's early TCP SYN with a RST (and for QUIC
//!   leaves a conntrack entry that makes masquerade move the port). A real router drops them:
//!   we add an input-hook drop for the WAN interface.
//! - patchbay's endpoint-independent filtering (`Open`) keeps a full-cone map for UDP only;
//!   TCP gets a plain port-preserving `snat`, so an `Open` router would drop (or reset) inbound
//!   TCP like a `Moderate` one. Real full-cone NATs map TCP too: we add the same map for TCP.

use std::fmt;

use anyhow::{Context as _, Result, bail};
use patchbay::{Nat, Router};
use serde::{Deserialize, Serialize};

/// How a NAT maps and filters, from easiest to hardest to punch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatKind {
    /// Full cone: endpoint-independent mapping and filtering (UPnP-mapped home routers).
    Open,
    /// Port-restricted cone: endpoint-independent mapping, address-and-port-dependent filtering
    /// (Linux masquerade, nearly every home router, RFC 6888 CGNAT).
    Moderate,
    /// Symmetric: a new random port per destination (mobile carriers, cloud NAT gateways,
    /// enterprise firewalls).
    Strict,
}

impl NatKind {
    /// All kinds, easiest first.
    pub const ALL: [NatKind; 3] = [NatKind::Open, NatKind::Moderate, NatKind::Strict];

    /// The patchbay preset.
    pub fn patchbay(self) -> Nat {
        match self {
            NatKind::Open => Nat::Open,
            NatKind::Moderate => Nat::Moderate,
            NatKind::Strict => Nat::Strict,
        }
    }

    /// Endpoint-independent mapping: the port others observe is the port a peer must target.
    pub fn endpoint_independent(self) -> bool {
        matches!(self, NatKind::Open | NatKind::Moderate)
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatKind::Open => "Open",
            NatKind::Moderate => "Moderate",
            NatKind::Strict => "Strict",
        })
    }
}

impl std::str::FromStr for NatKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "open" => Ok(NatKind::Open),
            "moderate" => Ok(NatKind::Moderate),
            "strict" => Ok(NatKind::Strict),
            _ => Err(format!(
                "'{s}' is not a NAT kind: expected open, moderate or strict"
            )),
        }
    }
}

/// Whether peers behind `a` and `b` should end up directly connected: yes when either side is
/// `Open` (the other can dial it, or it can be dialled back), or both map independently of the
/// endpoint (a hole punch lines up the ports); otherwise traffic stays on the relay.
pub fn expect_direct(a: NatKind, b: NatKind) -> bool {
    a == NatKind::Open
        || b == NatKind::Open
        || (a.endpoint_independent() && b.endpoint_independent())
}

/// Whether a birthday punch (QUIC only) gets peers behind `a` and `b` a direct connection where
/// a plain hole punch cannot: one side keeps its ports (Moderate), the other moves them
/// (Strict). Two Strict sides would need about 170,000 probes and stay on the relay.
pub fn birthday_fits(a: NatKind, b: NatKind) -> bool {
    matches!(
        (a, b),
        (NatKind::Moderate, NatKind::Strict) | (NatKind::Strict, NatKind::Moderate)
    )
}

/// The router's WAN interface (`ix` on the internet exchange, `wan` behind another router).
pub fn wan_interface(router: &Router) -> Result<String> {
    router
        .interfaces()
        .first()
        .map(|i| i.name().to_owned())
        .context("router has no interfaces")
}

/// Adds the input-hook drop, and for `Open` the TCP full-cone map (see the module docs).
pub fn harden(router: &Router, kind: Option<NatKind>) -> Result<()> {
    let wan = wan_interface(router)?;
    let mut rules = format!(
        r#"
table inet punchgate_guard {{
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{wan}" ct state established,related accept
        iifname "{wan}" drop
    }}
}}
"#
    );
    if kind == Some(NatKind::Open) {
        // Runs just before patchbay's srcnat chain, so `tcp sport` is still the inside port,
        // which patchbay's port-preserving snat keeps on the outside.
        rules.push_str(&format!(
            r#"
table ip punchgate_tcp_fullcone {{
    map fullcone {{
        type inet_service : ipv4_addr . inet_service
        flags dynamic,timeout
        timeout 300s
        size 65536
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "{wan}" meta l4proto tcp dnat to tcp dport map @fullcone
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat - 1; policy accept;
        oifname "{wan}" meta l4proto tcp update @fullcone {{ tcp sport timeout 300s : ip saddr . tcp sport }}
    }}
}}
"#
        ));
    }
    nft(router, &rules)
}

/// Forwards TCP `port` on the router's WAN address to `to` inside (a port forward, as a user
/// would set up by hand): the baseline a tunnel is compared with over the same links.
pub fn port_forward(router: &Router, port: u16, to: std::net::SocketAddrV4) -> Result<()> {
    let wan = wan_interface(router)?;
    nft(
        router,
        &format!(
            r#"
table ip punchgate_forward {{
    chain prerouting {{
        type nat hook prerouting priority dstnat - 1; policy accept;
        iifname "{wan}" tcp dport {port} dnat to {to}
    }}
}}
"#
        ),
    )?;
    accept_forwarded(router)
}

/// patchbay's filter (port-restricted and symmetric NATs) drops new inbound flows: let those
/// a port forward (ours, or a UPnP daemon's) translated through. `Open` routers have no
/// filter table.
pub fn accept_forwarded(router: &Router) -> Result<()> {
    let wan = wan_interface(router)?;
    let filtered = run_in(
        router,
        "nft",
        &["list", "chain", "ip", "filter", "forward"],
        None,
    )
    .is_ok();
    if filtered {
        run_in(
            router,
            "nft",
            &[
                "insert", "rule", "ip", "filter", "forward", "iifname", &wan, "ct", "status",
                "dnat", "accept",
            ],
            None,
        )?;
    }
    Ok(())
}

/// Applies nftables rules in the router's namespace.
pub fn nft(router: &Router, rules: &str) -> Result<()> {
    run_in(router, "nft", &["-f", "-"], Some(rules))
}

/// Runs a command in the router's namespace and returns what it printed; fails with its stderr.
pub fn output_in(router: &Router, program: &str, args: &[&str]) -> Result<String> {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = router
        .spawn_command_sync(cmd)
        .with_context(|| format!("cannot run {program} in router {}", router.name()))?
        .wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed in router {}: {}",
            router.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command in the router's namespace, feeding `stdin`; fails with its stderr.
pub fn run_in(router: &Router, program: &str, args: &[&str], stdin: Option<&str>) -> Result<()> {
    use std::io::Write as _;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = router
        .spawn_command_sync(cmd)
        .with_context(|| format!("cannot run {program} in router {}", router.name()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed in router {}: {}",
            router.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_follow_the_issue() {
        use NatKind::*;
        for a in NatKind::ALL {
            for b in NatKind::ALL {
                let direct = expect_direct(a, b);
                let relayed_only = (a == Strict && b != Open) || (b == Strict && a != Open);
                assert_eq!(direct, !relayed_only, "{a} x {b}");
            }
        }
    }
}
