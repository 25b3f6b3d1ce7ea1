//! Where webhooks may go: the public internet, and private networks only where the configuration lists them.
//!
//! A webhook URL is the client's, so without this a client could make the server post to services only it can
//! reach: its own loopback, the cloud's metadata address, the private network (server-side request forgery). The
//! check is on the addresses a name resolves to at the moment of connecting (the HTTP client's resolver is
//! [`Destinations`] itself), so a name that resolves to a public address when it is submitted and to a private
//! one when it is delivered (DNS rebinding) is still refused; an address written in the URL is checked at submit
//! and again before each delivery. Redirects are never followed (see `webhook.rs`), so a public receiver cannot
//! bounce a delivery inward either.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`), or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| format!("{text:?} is not an IP address or network"))?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {bits}"))?,
        };
        Ok(Self { address, prefix })
    }
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The addresses webhooks may be delivered to.
#[derive(Clone, Debug, Default)]
pub struct Destinations {
    /// Non-public networks the configuration allows (`webhook.allow_networks`).
    allowed: Vec<Network>,
}

impl Destinations {
    pub fn new(allowed: Vec<Network>) -> Self {
        Self { allowed }
    }

    /// Whether a delivery may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allowed.iter().any(|n| n.contains(ip))
    }

    /// Refuses a URL whose host is an address that is not permitted. Names are checked when they are resolved.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        let Some(ip) = url.host_str().and_then(|h| h.trim_start_matches('[').trim_end_matches(']').parse().ok()) else {
            return Ok(());
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(format!("{ip} is not a public address; webhooks go there only if webhook.allow_networks lists it"))
        }
    }
}

impl reqwest::dns::Resolve for Destinations {
    /// Resolves with the system's resolver, keeping only permitted addresses.
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = found.iter().copied().filter(|a| this.permits(a.ip())).collect();
            if permitted.is_empty() {
                let refused = found.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ");
                let why = format!(
                    "{host} resolves only to addresses that are not public ({refused}); webhooks go there only if \
                     webhook.allow_networks lists them"
                );
                return Err(why.into());
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An IPv4 address carried in IPv6 (`::ffff:10.0.0.1`) is judged as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Globally routable unicast: not loopback, private, link-local, shared (carrier NAT), unspecified, broadcast,
/// multicast, documentation or reserved.
fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (18..20).contains(&b)))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x0064 && ip.segments()[1] == 0xff9b)) // NAT64, which can reach IPv4's private networks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_public_addresses_are_permitted_by_default() {
        let d = Destinations::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!d.permits(ip(refused)), "{refused}");
        }
        for permitted in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(d.permits(ip(permitted)), "{permitted}");
        }
    }

    #[test]
    fn listed_networks_are_permitted() {
        let d = Destinations::new(vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]);
        assert!(d.permits(ip("127.0.0.1")) && d.permits(ip("127.9.9.9")) && d.permits(ip("::ffff:127.0.0.1")));
        assert!(d.permits(ip("fd12::1")));
        assert!(!d.permits(ip("10.0.0.1")) && !d.permits(ip("::1")));
        let one: Network = "10.0.0.7".parse().unwrap();
        assert!(one.contains(ip("10.0.0.7")) && !one.contains(ip("10.0.0.8")));
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("10.0.0.8")) && !all.contains(ip("::1")));
        for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_address_in_the_url_is_checked_a_name_is_left_to_the_resolver() {
        let d = Destinations::default();
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(d.check_url(&url("http://127.0.0.1:9/hook")).unwrap_err().contains("allow_networks"));
        assert!(d.check_url(&url("http://[::1]/hook")).is_err());
        assert!(d.check_url(&url("https://hooks.example.com/x")).is_ok());
        assert!(d.check_url(&url("https://8.8.8.8/x")).is_ok());
    }

    #[tokio::test]
    async fn a_name_that_resolves_only_inward_is_refused_at_connect_time() {
        use reqwest::dns::Resolve;
        let d = Destinations::default();
        let err = d.resolve("localhost".parse().unwrap()).await.err().expect("refused");
        assert!(err.to_string().contains("localhost resolves only to addresses that are not public"), "{err}");
        let allowed = Destinations::new(vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]);
        let addrs: Vec<_> = allowed.resolve("localhost".parse().unwrap()).await.unwrap().collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
