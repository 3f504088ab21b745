//! The client's IP address, for per-IP limits. Forwarding headers are believed only when the
//! direct peer is a trusted proxy (TRUSTED_PROXIES); anyone else could write any address there.

use std::net::IpAddr;

use actix_web::HttpRequest;
use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// A comma-separated list of addresses and CIDR ranges: `10.0.0.0/8, 127.0.0.1`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{entry:?} is neither an IP address nor a CIDR range"))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The peer's address, or, when the peer is a trusted proxy, the right-most address of
    /// `X-Forwarded-For` that is not itself a trusted proxy (entries further left were written
    /// by the client and prove nothing).
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        self.resolve(
            peer,
            req.headers()
                .get_all("x-forwarded-for")
                .filter_map(|v| v.to_str().ok()),
        )
    }

    /// Whether the request reached the proxy in front of the gateway over TLS: a trusted
    /// proxy said so in `X-Forwarded-Proto` (anyone else could write it).
    pub fn forwarded_https(&self, req: &HttpRequest) -> bool {
        req.peer_addr().is_some_and(|peer| self.trusts(peer.ip()))
            && req
                .headers()
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
    }

    fn resolve<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a str>,
    ) -> Option<IpAddr> {
        if !self.trusts(peer) {
            return Some(peer);
        }
        let hops: Vec<&str> = forwarded_for
            .flat_map(|header| header.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                // A garbled entry: stop at the last address we could trust.
                Err(_) => break,
            }
        }
        Some(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.resolve(ip("127.0.0.1"), ["9.9.9.9"].into_iter()),
            Some(ip("127.0.0.1"))
        );
        let proxies = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        assert_eq!(
            proxies.resolve(ip("127.0.0.1"), ["9.9.9.9"].into_iter()),
            Some(ip("9.9.9.9"))
        );
        assert_eq!(
            proxies.resolve(ip("127.0.0.1"), ["6.6.6.6, 9.9.9.9, 10.1.2.3"].into_iter()),
            Some(ip("9.9.9.9")),
            "the right-most untrusted hop, not the client-written left-most"
        );
        assert_eq!(
            proxies.resolve(ip("127.0.0.1"), ["garbage"].into_iter()),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(
            proxies.resolve(ip("8.8.8.8"), ["9.9.9.9"].into_iter()),
            Some(ip("8.8.8.8"))
        );
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.local").is_err());
    }
}
