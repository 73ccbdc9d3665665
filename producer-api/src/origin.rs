//! Where a request came from, for the audit trail: its User-Agent always,
//! its client's address only when `AUDIT_CLIENT_IP=true` (an address is
//! personal data, so recording it is the operator's decision). Behind
//! proxies the address comes from `X-Forwarded-For`, but only the hops
//! appended by a proxy listed in `AUDIT_TRUSTED_PROXIES` are believed: any
//! other part of that header the client wrote itself.

use crate::state::AppState;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use ipnet::IpNet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use todo_contract::envelope::Origin;
use todo_platform::config::{ConfigError, Env};

/// Longest User-Agent recorded (longer ones are cut).
pub const MAX_USER_AGENT: usize = 256;

/// Most `X-Forwarded-For` hops looked at, from the nearest.
const MAX_HOPS: usize = 32;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// `AUDIT_CLIENT_IP`: record the client's address.
    pub record_ip: bool,
    /// `AUDIT_TRUSTED_PROXIES`: addresses and networks whose
    /// `X-Forwarded-For` hops are believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl OriginPolicy {
    pub fn from_lookup<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let record_ip = env.parse_or("AUDIT_CLIENT_IP", false)?;
        let trusted_proxies = env
            .get("AUDIT_TRUSTED_PROXIES")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| ConfigError::Invalid {
                        var: "AUDIT_TRUSTED_PROXIES",
                        reason: format!(
                            "{s:?} is neither an address nor a network such as 10.0.0.0/8"
                        ),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            record_ip,
            trusted_proxies,
        })
    }

    /// The origin of the request `parts` belong to.
    pub fn origin(&self, parts: &Parts) -> Origin {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        Origin {
            user_agent: user_agent(&parts.headers),
            client_ip: peer
                .filter(|_| self.record_ip)
                .map(|peer| self.client_ip(peer, &parts.headers)),
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The nearest address that is not a trusted proxy: the peer itself,
    /// or walking `X-Forwarded-For` from its right end while each hop was
    /// added by a trusted proxy. A hop that is not an address ends the walk
    /// at the proxy that passed it on.
    fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for hop in hops.iter().rev().take(MAX_HOPS) {
            if !self.trusted(client) {
                break;
            }
            match parse_hop(hop) {
                Some(ip) => client = ip.to_canonical(),
                None => break,
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, perhaps with a port
/// (`203.0.113.7:4711`, `[2001:db8::1]:4711`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The User-Agent as printable text, cut at [`MAX_USER_AGENT`] characters.
fn user_agent(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(header::USER_AGENT)?.as_bytes();
    let text: String = String::from_utf8_lossy(raw)
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_USER_AGENT)
        .collect();
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The request's [`Origin`], by the server's [`OriginPolicy`].
pub struct ClientOrigin(pub Origin);

impl FromRequestParts<AppState> for ClientOrigin {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        Ok(ClientOrigin(state.origin.origin(parts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn policy(record_ip: bool, trusted: &str) -> OriginPolicy {
        let vars = [
            ("AUDIT_CLIENT_IP", record_ip.to_string()),
            ("AUDIT_TRUSTED_PROXIES", trusted.to_owned()),
        ];
        OriginPolicy::from_lookup(&Env::new(move |k: &str| {
            vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        }))
        .expect("valid")
    }

    fn parts(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::builder();
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let (mut parts, ()) = request.body(()).expect("request").into_parts();
        parts
            .extensions
            .insert(ConnectInfo(peer.parse::<SocketAddr>().expect("peer")));
        parts
    }

    fn ip(policy: &OriginPolicy, peer: &str, xff: &[&str]) -> Option<String> {
        let headers: Vec<_> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
        policy
            .origin(&parts(peer, &headers))
            .client_ip
            .map(|ip| ip.to_string())
    }

    #[test]
    fn no_address_is_recorded_unless_the_operator_asks() {
        let off = policy(false, "127.0.0.1");
        let origin = off.origin(&parts(
            "127.0.0.1:5000",
            &[
                ("user-agent", "curl/8.5.0"),
                ("x-forwarded-for", "203.0.113.7"),
            ],
        ));
        assert_eq!(origin.user_agent.as_deref(), Some("curl/8.5.0"));
        assert_eq!(origin.client_ip, None);
    }

    #[test]
    fn forwarded_hops_are_believed_only_from_trusted_proxies() {
        let none = policy(true, "");
        assert_eq!(
            ip(&none, "198.51.100.1:5000", &["203.0.113.7"]).as_deref(),
            Some("198.51.100.1"),
            "a client cannot name its own address"
        );
        let proxies = policy(true, "127.0.0.1, 10.0.0.0/8");
        assert_eq!(
            ip(
                &proxies,
                "127.0.0.1:5000",
                &["192.0.2.9, 203.0.113.7, 10.1.2.3"]
            )
            .as_deref(),
            Some("203.0.113.7"),
            "the nearest untrusted hop; what the client prepended is ignored"
        );
        assert_eq!(
            ip(
                &proxies,
                "127.0.0.1:5000",
                &["203.0.113.7:4711", "10.1.2.3"]
            )
            .as_deref(),
            Some("203.0.113.7"),
            "several headers are one list; a port is dropped"
        );
        assert_eq!(
            ip(&proxies, "127.0.0.1:5000", &["not-an-ip"]).as_deref(),
            Some("127.0.0.1"),
            "garbage ends the walk at the proxy that passed it"
        );
        assert_eq!(
            ip(&proxies, "[::ffff:127.0.0.1]:5000", &["2001:db8::1"]).as_deref(),
            Some("2001:db8::1"),
            "an IPv4-mapped peer is its IPv4 address"
        );
        assert_eq!(
            ip(&proxies, "198.51.100.1:5000", &["203.0.113.7"]).as_deref(),
            Some("198.51.100.1"),
            "an untrusted peer's header is ignored"
        );
    }

    #[test]
    fn a_user_agent_is_printable_and_bounded() {
        let p = policy(false, "");
        let long = format!("agent/{}", "x".repeat(1000));
        let origin = p.origin(&parts("127.0.0.1:1", &[("user-agent", long.as_str())]));
        assert_eq!(
            origin.user_agent.map(|u| u.chars().count()),
            Some(MAX_USER_AGENT)
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::USER_AGENT,
            axum::http::HeaderValue::from_bytes(b"caf\xc3\xa9\tbot").expect("header"),
        );
        assert_eq!(user_agent(&headers).as_deref(), Some("cafébot"));
        headers.insert(
            header::USER_AGENT,
            axum::http::HeaderValue::from_static("  "),
        );
        assert_eq!(user_agent(&headers), None);
    }

    #[test]
    fn a_bad_proxy_list_is_refused_by_name() {
        let env = Env::new(|k: &str| (k == "AUDIT_TRUSTED_PROXIES").then(|| "10.0.0.0/33".into()));
        let err = OriginPolicy::from_lookup(&env).expect_err("refused");
        assert!(err.to_string().contains("AUDIT_TRUSTED_PROXIES"), "{err}");
    }
}
