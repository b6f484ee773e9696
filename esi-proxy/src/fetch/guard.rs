//! The allowlist and the address guard against SSRF: which `scheme://host:port`s may be
//! fetched, with what trust, and a resolver that drops every address a host may not reach, so
//! no connection is ever attempted to one.

use std::collections::{HashMap, HashSet};
use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use hyper_util::client::legacy::connect::dns::Name;

use super::pool::ResolveName;
use super::Access;
use crate::config::{BaseUrl, Scheme};

/// Why an address is not a public one; `None` from [`classify`] means public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Special {
    /// 127/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, deprecated site-local fec0::/10.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// fc00::/7.
    UniqueLocal,
    /// 100.64/10, carrier-grade NAT.
    Shared,
    /// 0/8, ::.
    Unspecified,
    /// 224/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 240/4.
    Reserved,
    /// Cloud instance metadata services: never reachable through a name.
    Metadata,
}

/// Name resolution, injectable so tests can map names to loopback addresses.
pub trait Lookup: Send + Sync + 'static {
    /// Resolves `host` to socket addresses. The HTTP client calls this with port 0 (its
    /// resolver is not told the port) and connects to the URL's port.
    fn lookup(&self, host: &str, port: u16)
        -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>;
}

/// The system resolver, through `tokio::net::lookup_host`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

/// The DNS resolver every client uses: the injected [`Lookup`], minus every address the host
/// may not reach, so no connection is ever attempted to one.
pub(super) struct GuardedResolver {
    pub(super) lookup: Arc<dyn Lookup>,
    /// Lowercase names that may resolve to loopback/private/link-local addresses: the origin's
    /// host and entries with `private_network = true`. reqwest's resolver sees only the name,
    /// not the port, so this is per name.
    pub(super) private_ok: HashSet<String>,
}

/// A name resolved only to addresses the guard dropped; found in reqwest's error source chain
/// and reported as [`FetchError::Refused`].
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to private/loopback addresses")]
pub(super) struct Blocked {
    pub(super) host: String,
}

/// The allowed `scheme://host:port`s, keyed so that checking a URL allocates nothing (it runs
/// twice per fragment): by address for IP hosts, by lowercase name for the others.
#[derive(Debug, Default)]
pub(super) struct Allowlist {
    pub(super) by_ip: HashMap<(Scheme, IpAddr, u16), Access>,
    pub(super) by_name: HashMap<String, Vec<(Scheme, u16, Access)>>,
}

// === impl Special ===

impl fmt::Display for Special {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Special::Loopback => "loopback",
            Special::Private => "private",
            Special::LinkLocal => "link-local",
            Special::UniqueLocal => "unique-local",
            Special::Shared => "shared (CGNAT)",
            Special::Unspecified => "unspecified",
            Special::Multicast => "multicast",
            Special::Broadcast => "broadcast",
            Special::Reserved => "reserved",
            Special::Metadata => "cloud metadata",
        })
    }
}

/// What kind of non-public address `ip` is, or `None` for a public one. IPv4 addresses embedded
/// in IPv6 (mapped, compatible, NAT64) are classified as the IPv4 address they reach.
pub(super) fn classify(ip: IpAddr) -> Option<Special> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

pub(super) fn classify_v4(ip: Ipv4Addr) -> Option<Special> {
    // 169.254.169.254: AWS, GCP, Azure, OpenStack; 169.254.170.2: ECS task credentials;
    // 100.100.100.200: Alibaba Cloud.
    const METADATA: [Ipv4Addr; 3] = [
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::new(169, 254, 170, 2),
        Ipv4Addr::new(100, 100, 100, 200),
    ];
    let [a, b, ..] = ip.octets();
    Some(match (a, b) {
        _ if METADATA.contains(&ip) => Special::Metadata,
        (0, _) => Special::Unspecified,
        (127, _) => Special::Loopback,
        (10, _) | (192, 168) => Special::Private,
        (172, b) if b & 0xf0 == 16 => Special::Private,
        (169, 254) => Special::LinkLocal,
        (100, b) if b & 0xc0 == 64 => Special::Shared,
        (224..=239, _) => Special::Multicast,
        _ if ip == Ipv4Addr::BROADCAST => Special::Broadcast,
        (240..=255, _) => Special::Reserved,
        _ => return None,
    })
}

pub(super) fn classify_v6(ip: Ipv6Addr) -> Option<Special> {
    const METADATA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);
    let s = ip.segments();
    if ip == METADATA {
        return Some(Special::Metadata);
    }
    if ip.is_unspecified() {
        return Some(Special::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Special::Loopback);
    }
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (deprecated compatible), 64:ff9b::a.b.c.d (NAT64).
    let mapped_or_compatible = s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0);
    if mapped_or_compatible || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7])));
    }
    Some(match s[0] {
        0xfe80..=0xfebf => Special::LinkLocal,
        0xfec0..=0xfeff => Special::Private,
        0xfc00..=0xfdff => Special::UniqueLocal,
        0xff00..=0xffff => Special::Multicast,
        _ => return None,
    })
}

/// Whether a resolved address may be connected to: metadata never, other non-public addresses
/// only for names allowed private networks.
pub(super) fn address_allowed(ip: IpAddr, private_ok: bool) -> bool {
    match classify(ip) {
        None => true,
        Some(Special::Metadata) => false,
        Some(_) => private_ok,
    }
}

/// The addresses of `addrs` that may be connected to, with port 0 so the connector uses the
/// URL's port (or the scheme's default) rather than one the resolver made up.
pub(super) fn guard(addrs: Vec<SocketAddr>, private_ok: bool) -> Vec<SocketAddr> {
    addrs
        .into_iter()
        .filter(|addr| address_allowed(addr.ip(), private_ok))
        .map(|mut addr| {
            addr.set_port(0);
            addr
        })
        .collect()
}

// === impl Allowlist ===

impl Allowlist {
    pub(super) fn new(entries: HashMap<BaseUrl, Access>) -> Self {
        let mut list = Allowlist::default();
        for (base, access) in entries {
            match base.ip() {
                Some(ip) => {
                    list.by_ip.insert((base.scheme, ip, base.port), access);
                }
                None => list.by_name.entry(base.host).or_default().push((
                    base.scheme,
                    base.port,
                    access,
                )),
            }
        }
        list
    }

    /// The entry for a name host; `url` keeps http(s) names lowercase already, so a copy is
    /// only made for one that is not.
    pub(super) fn name(&self, scheme: Scheme, name: &str, port: u16) -> Option<Access> {
        let find = |name: &str| {
            self.by_name.get(name).and_then(|entries| {
                entries
                    .iter()
                    .find(|(s, p, _)| *s == scheme && *p == port)
                    .map(|(_, _, access)| *access)
            })
        };
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            find(&name.to_ascii_lowercase())
        } else {
            find(name)
        }
    }
}

// === impl SystemLookup ===

impl Lookup for SystemLookup {
    fn lookup(
        &self,
        host: &str,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

// === impl GuardedResolver ===

impl GuardedResolver {
    /// The addresses `name` may be connected to (port 0); [`Blocked`] when the guard dropped
    /// them all.
    pub(super) fn resolve_guarded(
        &self,
        name: &str,
    ) -> BoxFuture<'static, Result<Vec<SocketAddr>, Box<dyn StdError + Send + Sync>>> {
        let host = name.to_ascii_lowercase();
        let private_ok = self.private_ok.contains(&host);
        let lookup = self.lookup.lookup(&host, 0);
        Box::pin(async move {
            let addrs = lookup.await?;
            if addrs.is_empty() {
                let e = std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host}: no addresses"),
                );
                return Err(e.into());
            }
            let found = addrs.len();
            let kept = guard(addrs, private_ok);
            if kept.len() < found {
                tracing::debug!(%host, dropped = found - kept.len(), "dropped non-public addresses");
            }
            if kept.is_empty() {
                return Err(Box::new(Blocked { host }) as Box<dyn StdError + Send + Sync>);
            }
            Ok(kept)
        })
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolving = self.resolve_guarded(name.as_str());
        Box::pin(async move {
            let kept = resolving.await?;
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

// === impl ResolveName ===

impl tower_service::Service<Name> for ResolveName {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolving = self.0.resolve_guarded(name.as_str());
        Box::pin(async move { resolving.await.map(Vec::into_iter) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_classes() {
        use Special::*;
        let cases: &[(&str, Option<Special>)] = &[
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("10.0.0.1", Some(Private)),
            ("172.15.255.255", None),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.0", None),
            ("192.168.1.1", Some(Private)),
            ("192.169.0.1", None),
            ("169.254.0.1", Some(LinkLocal)),
            ("169.254.169.254", Some(Metadata)),
            ("169.254.170.2", Some(Metadata)),
            ("100.100.100.200", Some(Metadata)),
            ("100.63.255.255", None),
            ("100.64.0.1", Some(Shared)),
            ("100.127.255.255", Some(Shared)),
            ("100.128.0.0", None),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.255", Some(Multicast)),
            ("240.0.0.1", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
            ("2606:4700::1111", None),
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("fec0::1", Some(Private)),
            ("fc00::1", Some(UniqueLocal)),
            ("fd12:3456::1", Some(UniqueLocal)),
            ("fd00:ec2::254", Some(Metadata)),
            ("ff02::1", Some(Multicast)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:169.254.169.254", Some(Metadata)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Loopback)),
            ("64:ff9b::192.168.0.1", Some(Private)),
            ("64:ff9b::8.8.8.8", None),
        ];
        for (ip, want) in cases {
            let parsed: IpAddr = ip.parse().expect("test addresses parse");
            assert_eq!(classify(parsed), *want, "ip: {ip}");
        }
    }

    #[test]
    fn resolved_addresses_guarded() {
        // (address, allowed for an ordinary name, allowed for a private-network name)
        let cases: &[(&str, bool, bool)] = &[
            ("93.184.216.34:80", true, true),
            ("[2606:4700::1111]:443", true, true),
            ("127.0.0.1:8080", false, true),
            ("10.0.0.5:80", false, true),
            ("[::1]:80", false, true),
            ("[fd12::1]:80", false, true),
            ("[::ffff:127.0.0.1]:80", false, true),
            ("100.64.1.1:80", false, true),
            ("169.254.169.254:80", false, false),
            ("[fd00:ec2::254]:80", false, false),
            ("[::ffff:169.254.169.254]:80", false, false),
        ];
        for (addr, public, private) in cases {
            let addr: SocketAddr = addr.parse().expect("test addresses parse");
            for (private_ok, want) in [(false, *public), (true, *private)] {
                let kept = guard(vec![addr], private_ok);
                assert_eq!(
                    !kept.is_empty(),
                    want,
                    "addr: {addr}, private_ok: {private_ok}"
                );
                assert!(
                    kept.iter().all(|a| a.port() == 0),
                    "addr: {addr}: port reset"
                );
            }
        }
    }
}
