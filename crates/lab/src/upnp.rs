//! A real UPnP IGD (and NAT-PMP) daemon on a lab router: Debian's `miniupnpd` with its
//! nftables backend, run inside the router's namespace, as a home router runs it.
//!
//! The daemon answers SSDP searches on the router's LAN, and adds each mapping a peer asks for
//! as a DNAT rule (and a forward accept) in chains of its own. The chains hang off a table
//! [`Daemon::start`] creates; patchbay's own forward filter, which drops new inbound flows,
//! lets DNAT'd ones through ([`nat::accept_forwarded`]), as a router's firewall does for its
//! port forwards.
//!
//! The lab's internet (198.18.0.0/24) is a reserved range, and miniupnpd refuses to map
//! behind a reserved WAN address (so do most IGD clients, ours included), as it should: such
//! a router sits behind another NAT. So the router also holds a global address,
//! [`PUBLIC_IP`], on its WAN, and the other routers on the exchange route it to the router:
//! the daemon reports it as the external address, and peers dial it. Packets to it never leave
//! the lab's namespaces.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
};

use anyhow::{Context as _, Result, bail};
use patchbay::Router;

use crate::nat;

/// The global address a port-mapping router holds on its WAN (see the module docs).
pub const PUBLIC_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(20, 99, 0, 1);

/// The nftables table the daemon's chains live in.
const TABLE: &str = "punchgate_upnp";

/// A running miniupnpd; stopped (and its files removed) on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    /// Starts miniupnpd on `router` for the devices on its LAN, with [`PUBLIC_IP`] on its
    /// WAN, routed to it by each of `neighbours` (the other routers on the exchange).
    pub fn start(router: &Router, neighbours: &[&Router]) -> Result<Daemon> {
        let program = which_miniupnpd()?;
        let wan = nat::wan_interface(router)?;
        let uplink = router.uplink_ip().context("router has no WAN address")?;
        let public = format!("{PUBLIC_IP}/32");
        nat::run_in(router, "ip", &["addr", "add", &public, "dev", &wan], None)?;
        for n in neighbours {
            nat::run_in(
                n,
                "ip",
                &["route", "add", &public, "via", &uplink.to_string()],
                None,
            )?;
        }
        let wan_ip = PUBLIC_IP;
        let lan_gw = router
            .downstream_gw()
            .context("router has no LAN address")?;
        let lan_cidr = router
            .downstream_cidr()
            .context("router has no LAN subnet")?;
        let lan = lan_interface(router, lan_gw)?;
        nat::nft(
            router,
            &format!(
                r#"
table inet {TABLE} {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        jump miniupnpd
    }}
    chain miniupnpd {{
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        jump postrouting_miniupnpd
    }}
    chain prerouting_miniupnpd {{
    }}
    chain postrouting_miniupnpd {{
    }}
}}
"#
            ),
        )?;
        nat::accept_forwarded(router)?;

        let dir = std::env::temp_dir().join(format!(
            "punchgate-upnp-{}-{}",
            router.ns(),
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let conf = dir.join("miniupnpd.conf");
        std::fs::write(
            &conf,
            format!(
                "ext_ifname={wan}\n\
                 ext_ip={wan_ip}\n\
                 listening_ip={lan}\n\
                 port=0\n\
                 enable_upnp=yes\n\
                 enable_natpmp=yes\n\
                 secure_mode=yes\n\
                 system_uptime=yes\n\
                 uuid=7e4b1f4e-55a1-4d1c-9d7b-70756e636867\n\
                 upnp_table_name={TABLE}\n\
                 upnp_nat_table_name={TABLE}\n\
                 upnp_forward_chain=miniupnpd\n\
                 upnp_nat_chain=prerouting_miniupnpd\n\
                 upnp_nat_postrouting_chain=postrouting_miniupnpd\n\
                 allow 1024-65535 {lan_cidr} 1024-65535\n\
                 deny 0-65535 0.0.0.0/0 0-65535\n"
            ),
        )?;
        let log = std::fs::File::create(dir.join("miniupnpd.log"))?;
        let mut cmd = std::process::Command::new(program);
        cmd.arg("-d")
            .arg("-f")
            .arg(&conf)
            .arg("-P")
            .arg(dir.join("miniupnpd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = router
            .spawn_command_sync(cmd)
            .with_context(|| format!("cannot start miniupnpd in router {}", router.name()))?;
        let mut daemon = Daemon { child, dir };
        // It fails at once on a bad config; give it a moment to say so.
        std::thread::sleep(std::time::Duration::from_millis(200));
        if let Some(status) = daemon.child.try_wait()? {
            let log = std::fs::read_to_string(daemon.dir.join("miniupnpd.log")).unwrap_or_default();
            bail!(
                "miniupnpd exited at once ({status}) in router {}: {}",
                router.name(),
                log.trim()
            );
        }
        Ok(daemon)
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("miniupnpd.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The router's interface that holds `gw` (its LAN bridge).
fn lan_interface(router: &Router, gw: std::net::Ipv4Addr) -> Result<String> {
    let out = nat::output_in(router, "ip", &["-o", "-4", "addr", "show"])?;
    let needle = format!("inet {gw}/");
    out.lines()
        .find(|l| l.contains(&needle))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_owned)
        .with_context(|| format!("no interface holds {gw} in router {}", router.name()))
}

/// Where miniupnpd is installed (Debian puts it in /usr/sbin).
fn which_miniupnpd() -> Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/local/sbin", "/sbin"] {
        let p = PathBuf::from(dir).join("miniupnpd");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("miniupnpd is not installed: apt-get install miniupnpd-nftables (scripts/test does)")
}
