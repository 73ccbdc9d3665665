//! Outgoing HTTP for webhooks and push services, without SSRF: a user
//! chooses the URL, so the notifier must not become their way into the
//! cluster. Every address a host name resolves to is checked, at the
//! moment of connecting (so a DNS answer cannot change between check and
//! use), and redirects are not followed.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Loopback, private, link-local (cloud metadata at 169.254.169.254),
/// shared, unspecified, broadcast, multicast and documentation ranges.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                // 100.64.0.0/10 (carrier-grade NAT) and 0.0.0.0/8.
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
        }
    }
}

/// The error of a refused address, found again in reqwest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves to an internal address ({1}); refused")]
pub struct Refused(String, IpAddr);

struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|a| is_internal(a.ip())) {
                return Err(
                    Box::new(Refused(host, bad.ip())) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Who the notifier may call.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `WEBHOOK_ALLOW_PRIVATE_NETWORKS`: tests and local development
    /// deliver to loopback and private addresses, and over plain http.
    pub allow_private: bool,
}

impl Policy {
    /// A client whose own timeout is a backstop a little past `timeout`,
    /// the attempt's limit that the caller enforces (and reports).
    pub fn client(self, timeout: Duration) -> reqwest::Result<reqwest::Client> {
        let backstop = timeout + Duration::from_secs(1);
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(backstop)
            .connect_timeout(backstop)
            .user_agent(concat!("todo-notifier/", env!("CARGO_PKG_VERSION")));
        let builder = if self.allow_private {
            builder
        } else {
            builder.dns_resolver(Arc::new(PublicOnly))
        };
        builder.build()
    }

    /// What the resolver cannot see: the scheme, and a host that is an
    /// address already.
    pub fn check(self, url: &url::Url) -> Result<(), String> {
        if self.allow_private {
            return Ok(());
        }
        if url.scheme() != "https" {
            return Err("only https URLs are delivered to".into());
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        match literal {
            Some(ip) if is_internal(ip) => Err(format!("{ip} is an internal address; refused")),
            _ => Ok(()),
        }
    }
}

/// Whether `e` came from a refused address (not worth retrying).
pub fn refused(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<Refused>() {
            return Some(r.to_string());
        }
        cause = c.source();
    }
    None
}

/// An HTTP answer or error as a delivery outcome: 2xx delivered; a
/// timeout, 408, 429 or 5xx worth another try; any other answer final.
pub fn outcome(result: reqwest::Result<reqwest::Response>) -> Result<(), super::Failure> {
    use super::Failure;
    match result {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let status = r.status();
            let reason = format!("the receiver answered {status}");
            if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                Err(Failure::Transient(reason))
            } else {
                Err(Failure::Permanent(reason))
            }
        }
        Err(e) => match refused(&e) {
            Some(why) => Err(Failure::Permanent(why)),
            None if e.is_timeout() => Err(Failure::Transient(
                "the receiver did not answer in time".into(),
            )),
            None => Err(Failure::Transient(format!(
                "could not reach the receiver: {e}"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn the_scheme_and_literal_addresses_are_checked_before_connecting() {
        let strict = Policy {
            allow_private: false,
        };
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(strict.check(&url("https://hooks.example/x")).is_ok());
        assert!(strict.check(&url("http://hooks.example/x")).is_err());
        assert!(strict.check(&url("https://127.0.0.1/x")).is_err());
        assert!(strict.check(&url("https://[::1]/x")).is_err());
        assert!(strict
            .check(&url("https://169.254.169.254/latest"))
            .is_err());
        assert!(Policy {
            allow_private: true
        }
        .check(&url("http://127.0.0.1:9/x"))
        .is_ok());
    }

    /// The resolver refuses a name that points inside, and the error says so.
    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_when_connecting() {
        let client = Policy {
            allow_private: false,
        }
        .client(Duration::from_secs(5))
        .unwrap();
        let result = client.get("https://localhost:9/").send().await;
        let err = result.expect_err("localhost must be refused");
        assert!(refused(&err).is_some(), "{err:?}");
        assert!(matches!(
            outcome(Err(err)),
            Err(super::super::Failure::Permanent(_))
        ));
    }
}
