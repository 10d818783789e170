//! The SSRF guard: which addresses a provider request may reach. Endpoints a customer could set
//! are called only at public addresses, checked at resolution time by [`PublicOnlyResolver`] so
//! the address checked is the address used (no DNS rebinding between check and call).

use std::net::IpAddr;

use crate::domain::validate::is_loopback_host;

/// Whether `ip` is a public unicast address: not private, loopback, link-local, shared (CGNAT),
/// benchmarking, reserved or multicast; IPv6 forms that embed an IPv4 address are judged by it.
pub fn ip_is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || (a == 192 && b == 0 && c == 0))
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            // Addresses that embed an IPv4 one are judged by it: mapped, compatible (::a.b.c.d),
            // NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
            let embedded = v6
                .to_ipv4_mapped()
                .or_else(|| {
                    (seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified())
                        .then(|| v6.to_ipv4().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED))
                })
                .or_else(|| {
                    (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0; 4]).then(|| {
                        let o = v6.octets();
                        std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15])
                    })
                })
                .or_else(|| {
                    (seg[0] == 0x2002).then(|| {
                        let o = v6.octets();
                        std::net::Ipv4Addr::new(o[2], o[3], o[4], o[5])
                    })
                });
            match embedded {
                Some(v4) => ip_is_public(IpAddr::V4(v4)),
                None => {
                    !(v6.is_loopback()
                        || v6.is_unspecified()
                        || v6.is_multicast()
                        || (seg[0] & 0xfe00) == 0xfc00
                        || (seg[0] & 0xffc0) == 0xfe80)
                }
            }
        }
    }
}

/// DNS for provider URLs that came from a customer: only public addresses are ever connected
/// to, so the address checked is the address used (no DNS rebinding between check and call).
pub(crate) struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.filter(|a| ip_is_public(a.ip())).collect();
            if addrs.is_empty() {
                return Err("the host has no public address".into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A URL built from a customer's input must not reach into private networks (SSRF): every
/// address its host resolves to must be public. Loopback written literally is the one
/// exception, where allowed (local development and tests; off by default on AWS).
pub async fn check_public_destination(url: &url::Url, allow_loopback: bool) -> std::result::Result<(), &'static str> {
    if is_loopback_host(url) {
        return if allow_loopback { Ok(()) } else { Err("is a loopback address") };
    }
    let host = url.host_str().ok_or("has no host")?;
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs = tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .map_err(|_| "does not resolve")?;
    let mut any = false;
    for a in addrs {
        any = true;
        if !ip_is_public(a.ip()) {
            return Err("resolves to a private, loopback or link-local address");
        }
    }
    if any { Ok(()) } else { Err("does not resolve") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_destinations_are_not_public() {
        for ip in [
            "10.0.0.1",
            "172.16.3.4",
            "192.168.1.1",
            "169.254.169.254",
            "127.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!ip_is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111"] {
            assert!(ip_is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
