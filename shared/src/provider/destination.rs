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
                || (a == 192 && b == 0 && c == 0)
                // Documentation (RFC 5737) and the old 6to4 relay anycast (RFC 7526).
                || (a == 192 && b == 0 && c == 2)
                || (a == 198 && b == 51 && c == 100)
                || (a == 203 && b == 0 && c == 113)
                || (a == 192 && b == 88 && c == 99))
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            // Addresses that embed an IPv4 one are judged by it: mapped (::ffff:a.b.c.d),
            // translated (::ffff:0:a.b.c.d), compatible (::a.b.c.d), NAT64 (64:ff9b::/96)
            // and 6to4 (2002::/16).
            let embedded = v6
                .to_ipv4_mapped()
                .or_else(|| {
                    (seg[..4] == [0; 4] && seg[4] == 0xffff && seg[5] == 0).then(|| {
                        let o = v6.octets();
                        std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15])
                    })
                })
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
                        // Unique local (fc00::/7), link-local (fe80::/10), site-local (fec0::/10).
                        || (seg[0] & 0xfe00) == 0xfc00
                        || (seg[0] & 0xffc0) == 0xfe80
                        || (seg[0] & 0xffc0) == 0xfec0
                        // Local-use NAT64 (64:ff9b:1::/48), discard (100::/64), Teredo
                        // (2001::/32, a tunnel to an obfuscated IPv4 address), documentation
                        // (2001:db8::/32).
                        || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1)
                        || (seg[0] == 0x100 && seg[1..4] == [0; 3])
                        || (seg[0] == 0x2001 && seg[1] == 0)
                        || (seg[0] == 0x2001 && seg[1] == 0xdb8))
                }
            }
        }
    }
}

/// DNS for provider URLs: only public addresses are ever connected to, so the address checked is
/// the address used (no DNS rebinding between check and call).
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

/// How long a name may take to resolve before the call is given up as transient.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// No URL Latchkey calls may reach into private networks (SSRF), whoever set it: every
/// address its host resolves to must be public. Loopback written literally is the one
/// exception, where allowed (local development and tests; off by default on AWS).
pub async fn check_public_destination(url: &url::Url, allow_loopback: bool) -> Result<(), DestinationError> {
    if is_loopback_host(url) {
        return if allow_loopback { Ok(()) } else { Err(DestinationError::Refused(NotPublic::Loopback)) };
    }
    check_literal_destination(url, allow_loopback)?;
    let host = url.host_str().ok_or(DestinationError::Refused(NotPublic::NoHost))?;
    let port = url.port_or_known_default().unwrap_or(443);
    // Bounded: a resolver that hangs must not hold a refresh past its lease.
    let lookup = tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port));
    let addrs = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
        .await
        .map_err(|_| DestinationError::Unresolved)?
        .map_err(|_| DestinationError::Unresolved)?;
    let mut any = false;
    for a in addrs {
        any = true;
        if !ip_is_public(a.ip()) {
            return Err(DestinationError::Refused(NotPublic::ResolvesPrivate));
        }
    }
    if any { Ok(()) } else { Err(DestinationError::Unresolved) }
}

/// Why a destination may not be called now.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum DestinationError {
    /// Never: the address is not public (or is loopback where that is not allowed).
    #[error(transparent)]
    Refused(#[from] NotPublic),
    /// Not now: the name does not resolve (DNS may be down, or the name gone).
    #[error("does not resolve")]
    Unresolved,
}

/// Why an address is refused by the outbound policy. `Display` completes a sentence about the
/// URL ("the token endpoint {it}"), as field errors and redirect descriptions show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotPublic {
    /// Loopback, where the deployment does not allow it.
    #[error("is a loopback address")]
    Loopback,
    #[error("has no host")]
    NoHost,
    /// A literal private, loopback or link-local address.
    #[error("is a private, loopback or link-local address")]
    Private,
    /// A name one of whose addresses is private, loopback or link-local.
    #[error("resolves to a private, loopback or link-local address")]
    ResolvesPrivate,
}

/// The part of [`check_public_destination`] that needs no DNS: a literal address must be
/// public, `localhost` and loopback addresses only where allowed. For checks at write time
/// (a name that does not resolve yet is not an error then; it is at each call).
///
/// # Errors
/// [`NotPublic`]: loopback where not allowed, no host, or a literal non-public address.
pub fn check_literal_destination(url: &url::Url, allow_loopback: bool) -> Result<(), NotPublic> {
    if is_loopback_host(url) {
        return if allow_loopback { Ok(()) } else { Err(NotPublic::Loopback) };
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(url::Host::Domain(_)) => return Ok(()),
        None => return Err(NotPublic::NoHost),
    };
    if ip_is_public(ip) { Ok(()) } else { Err(NotPublic::Private) }
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
            "::ffff:127.0.0.1",
            "::ffff:0:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::808:808",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::",
            "fc00::1",
            "fec0::1",
            "2001:db8::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "100::1",
            "192.0.2.1",
            "203.0.113.9",
            "255.255.255.255",
            "224.0.0.1",
            "ff02::1",
        ] {
            assert!(!ip_is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111", "64:ff9b::808:808", "2002:808:808::", "::ffff:8.8.8.8"] {
            assert!(ip_is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn literal_destinations_are_judged_without_dns() {
        let check = |u: &str, allow| check_literal_destination(&url::Url::parse(u).unwrap(), allow);
        assert!(check("https://idp.example.com/token", false).is_ok(), "names are resolved at call time");
        assert!(check("https://8.8.8.8/token", false).is_ok());
        for u in
            ["https://10.0.0.1/t", "https://169.254.169.254/", "https://[::ffff:127.0.0.1]/t", "https://[fd00::1]/t"]
        {
            assert!(check(u, true).is_err(), "{u}");
        }
        assert!(check("http://127.0.0.1:9/t", false).is_err());
        assert!(check("http://localhost:9/t", false).is_err());
        assert!(check("http://127.0.0.1:9/t", true).is_ok());
        // The words complete "the token endpoint ..." in field errors and redirect descriptions.
        assert_eq!(
            check("https://10.0.0.1/t", true).unwrap_err().to_string(),
            "is a private, loopback or link-local address"
        );
        assert_eq!(check("http://localhost:9/t", false).unwrap_err().to_string(), "is a loopback address");
    }
}
