//! What the driver does with the router's port mappings ([`crate::net::port_map`]): says what
//! happened in the log, tells the machine when peers can dial us through the router, has
//! AutoNAT check the mapped address, and removes the mappings when the node stops.

use punchgate_machine::Event;

use super::Driver;
use crate::net::port_map::Event as PortMapEvent;

impl Driver {
    pub(super) fn on_port_map_event(&mut self, event: PortMapEvent) {
        match event {
            PortMapEvent::Mapped {
                protocol,
                internal,
                external,
                address,
            } => {
                tracing::info!(
                    protocol,
                    %internal,
                    %external,
                    %address,
                    "the router forwards a port to us (UPnP): peers behind any NAT can dial us directly"
                );
                // AutoNAT checks it too, and overrules the router if dial-backs fail.
                self.swarm
                    .behaviour_mut()
                    .autonat
                    .probe_address(address.clone());
                self.step(Event::PortMapped { addr: address });
            }
            PortMapEvent::Expired { address, error } => tracing::warn!(
                %address,
                %error,
                "the router stopped forwarding a port to us (UPnP renewal failed): peers reach us by hole punching or through a relay"
            ),
            PortMapEvent::Failed {
                protocol,
                port,
                error,
            } => tracing::warn!(
                protocol,
                port,
                %error,
                hint = "direct connections still use hole punching; forward the port on the router by hand, or pass --no-upnp to stop asking",
                "the router refused to forward a port to us (UPnP)"
            ),
            PortMapEvent::NoGateway { reason } => tracing::info!(
                %reason,
                "no router offers port mapping (UPnP IGD): direct connections rely on hole punching"
            ),
            PortMapEvent::NotPublic { external_ip } => tracing::info!(
                %external_ip,
                "the router offers port mapping (UPnP), but its own address is not public (another NAT, such as a carrier's, is in front of it): not mapping"
            ),
        }
    }

    /// Removes our mappings from the router (bounded by [`crate::net::port_map::RELEASE_TIMEOUT`]).
    pub(super) async fn release_port_mappings(&mut self) {
        match self.swarm.behaviour_mut().port_map.release().await {
            Some(0) | None => {}
            Some(removed) => tracing::info!(removed, "removed our port mappings from the router"),
        }
    }
}
