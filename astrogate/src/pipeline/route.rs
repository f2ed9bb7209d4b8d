//! The route stage: where a sniffed connection goes.
use std::net::IpAddr;

use crate::{
    config::{ListenerConfig, Target},
    proxy_protocol::Version as ProxyVersion,
    route::{AcmeAction, RouteTable},
    sniff::Detected,
};

pub enum Plan {
    Connect {
        target: Target,
        default_port: u16,
        /// A PROXY header to send the upstream first.
        proxy: Option<ProxyVersion>,
    },
    Redirect(String),
    /// A route serves the name, but not to this client's address.
    Denied,
}

/// Decides where a sniffed connection goes. `None` means nowhere: no route and no default.
pub fn plan(
    detected: Option<&Detected>,
    listener: &ListenerConfig,
    routes: &RouteTable,
    local_port: u16,
    client: IpAddr,
) -> Option<Plan> {
    let default_port = match detected {
        Some(Detected::Dial(req)) => req.port,
        _ => local_port,
    };
    let connect = |target: &Target, proxy| Plan::Connect {
        target: target.clone(),
        default_port,
        proxy,
    };
    let route = detected
        .and_then(Detected::host)
        .and_then(|host| routes.lookup(host, &listener.name));
    match (detected, route) {
        (_, Some(route)) if !route.acl.permits(client) => Some(Plan::Denied),
        (Some(Detected::Acme(challenge)), Some(route)) => Some(match &route.acme {
            // An ACME responder is not the route's service: it gets no PROXY header.
            Some(AcmeAction::Proxy(target)) => connect(target, None),
            Some(AcmeAction::Redirect(base)) => Plan::Redirect(format!("{base}{}", challenge.path)),
            None => connect(&route.to, route.proxy_protocol),
        }),
        (_, Some(route)) => Some(connect(&route.to, route.proxy_protocol)),
        // A dial names its destination explicitly; sending it to a default would connect the
        // client somewhere it did not ask for.
        (Some(Detected::Dial(_)), None) => None,
        (_, None) => listener
            .default
            .as_ref()
            .map(|to| connect(to, listener.proxy_protocol)),
    }
}
