//! Configuration from the environment variables of DESIGN.md.
//!
//! Every binary reads the same variables through [`Settings::from_env`]. A
//! missing or malformed variable is a [`ConfigError`] whose `Display` is one
//! line naming the variable; secrets are held in [`SecretString`] so they never
//! reach a log line or a `Debug` print.

use secrecy::SecretString;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The one error type of this boundary: which variable, and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var} is required ({meaning})")]
    Missing {
        var: &'static str,
        meaning: &'static str,
    },
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
}

/// How the Kafka clients authenticate (`KAFKA_SECURITY_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

impl FromStr for SecurityProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Ok(Self::Plaintext),
            "SSL" => Ok(Self::Ssl),
            "SASL_PLAINTEXT" => Ok(Self::SaslPlaintext),
            "SASL_SSL" => Ok(Self::SaslSsl),
            _ => Err("expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL".into()),
        }
    }
}

/// `KAFKA_SASL_MECHANISM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl FromStr for SaslMechanism {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(Self::Plain),
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            _ => Err("expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512".into()),
        }
    }
}

/// SASL credentials; present only when the security protocol uses SASL.
#[derive(Clone)]
pub struct SaslSettings {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: SecretString,
}

impl fmt::Debug for SaslSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslSettings")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    pub security_protocol: SecurityProtocol,
    pub sasl: Option<SaslSettings>,
    pub topic_prefix: String,
    /// Partitions of the topics this service creates when they are absent.
    pub topic_partitions: i32,
    /// Replication factor of the topics this service creates (1 for a
    /// single-node Redpanda, 3 on managed Kafka).
    pub replication_factor: i32,
}

impl KafkaSettings {
    /// A plaintext broker with no prefix: what tests and local runs use.
    pub fn plaintext(
        bootstrap_servers: impl Into<String>,
        topic_prefix: impl Into<String>,
    ) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl: None,
            topic_prefix: topic_prefix.into(),
            topic_partitions: 6,
            replication_factor: 1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    /// `DATABASE_STATEMENT_TIMEOUT_MS`: longest any one statement may run
    /// (PostgreSQL's `statement_timeout`), so that no request or event can
    /// hold a connection for long. Zero: no limit.
    pub statement_timeout: Duration,
}

impl DatabaseSettings {
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

    /// `url` with the other settings at their defaults.
    pub fn new(url: impl Into<String>, max_connections: u32) -> Self {
        Self {
            url: SecretString::from(url.into()),
            max_connections,
            statement_timeout: Self::DEFAULT_STATEMENT_TIMEOUT,
        }
    }
}

/// Settings shared by every binary. Service-specific knobs live with the
/// service and are read with [`Env`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
    pub port: u16,
    /// How long clients may take (`HTTP_*`).
    pub http: crate::server::HttpLimits,
}

/// How user tokens are checked: read only by the services that verify them
/// (todo-api, todo-audit, todo-realtime), so the others start without the
/// secret.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// `JWT_SECRET`, the HS256 key.
    pub secret: SecretString,
    /// `JWT_ISSUER`: when set, a token's `iss` must be this.
    pub issuer: Option<String>,
    /// `JWT_AUDIENCE`: when set, a token's `aud` must include this.
    pub audience: Option<String>,
    /// `JWT_VERIFIED_CACHE`: how many verified tokens are remembered until
    /// they expire (0: every request checks its token in full).
    pub verified_cache: usize,
}

/// Verified tokens remembered by default: each is a few hundred bytes.
pub const DEFAULT_VERIFIED_CACHE: usize = 10_000;

impl JwtSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&Env::process())
    }

    pub fn from_lookup<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let secret = env.required("JWT_SECRET", "HS256 secret for user tokens")?;
        if secret.len() < MIN_JWT_SECRET_BYTES {
            return Err(ConfigError::Invalid {
                var: "JWT_SECRET",
                reason: format!("must be at least {MIN_JWT_SECRET_BYTES} bytes long"),
            });
        }
        Ok(Self {
            secret: SecretString::from(secret),
            issuer: env.get("JWT_ISSUER"),
            audience: env.get("JWT_AUDIENCE"),
            verified_cache: env.parse_or("JWT_VERIFIED_CACHE", DEFAULT_VERIFIED_CACHE)?,
        })
    }

    /// Just a secret, no issuer or audience (tests and tools).
    pub fn with_secret(secret: &str) -> Self {
        Self {
            secret: SecretString::from(secret.to_owned()),
            issuer: None,
            audience: None,
            verified_cache: DEFAULT_VERIFIED_CACHE,
        }
    }
}

/// Reads variables from a lookup function (the process environment, or a map
/// in tests), turning absence and bad values into [`ConfigError`]s.
pub struct Env<F> {
    lookup: F,
}

impl Env<fn(&str) -> Option<String>> {
    pub fn process() -> Self {
        fn get(key: &str) -> Option<String> {
            std::env::var(key).ok()
        }
        Env { lookup: get }
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn new(lookup: F) -> Self {
        Env { lookup }
    }

    /// The value, with empty strings treated as unset.
    pub fn get(&self, var: &str) -> Option<String> {
        (self.lookup)(var).filter(|v| !v.trim().is_empty())
    }

    pub fn required(
        &self,
        var: &'static str,
        meaning: &'static str,
    ) -> Result<String, ConfigError> {
        self.get(var).ok_or(ConfigError::Missing { var, meaning })
    }

    pub fn or(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or_else(|| default.to_owned())
    }

    pub fn parse_or<T>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Invalid {
                    var,
                    reason: e.to_string(),
                }),
        }
    }

    /// A retention given in `unit`s (hours, days): a whole number, or a
    /// fraction for tests and soaks (`0.05` hours is 3 minutes); from one
    /// minute to `max`.
    pub fn retention_or(
        &self,
        var: &'static str,
        unit: Duration,
        default: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(default);
        };
        let units = unit.as_secs_f64();
        let invalid = || ConfigError::Invalid {
            var,
            reason: format!(
                "must be a number between {} (a minute) and {}",
                60.0 / units,
                max.as_secs_f64() / units
            ),
        };
        let value: f64 = raw.trim().parse().map_err(|_| invalid())?;
        let secs = value * units;
        // NaN is in no range.
        if !(60.0..=max.as_secs_f64()).contains(&secs) {
            return Err(invalid());
        }
        // Whole milliseconds: 0.05 hours is 180 s, not 180 s and a few ns.
        Ok(Duration::from_millis((secs * 1000.0).round() as u64))
    }

    /// A duration given in milliseconds.
    pub fn millis_or(&self, var: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        let ms: u64 = self.parse_or(var, default.as_millis() as u64)?;
        Ok(Duration::from_millis(ms))
    }
}

/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least as
/// long as the hash output (256 bits).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

impl Settings {
    pub fn from_env(default_port: u16) -> Result<Self, ConfigError> {
        Self::from_lookup(&Env::process(), default_port)
    }

    pub fn from_lookup<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        default_port: u16,
    ) -> Result<Self, ConfigError> {
        let database_url = env.or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/todo");
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError::Invalid {
                var: "DATABASE_URL",
                reason: "expected a postgres:// URL".into(),
            });
        }
        let max_connections: u32 = env.parse_or("DATABASE_MAX_CONNECTIONS", 16)?;
        if max_connections == 0 {
            return Err(ConfigError::Invalid {
                var: "DATABASE_MAX_CONNECTIONS",
                reason: "must be at least 1".into(),
            });
        }

        let security_protocol: SecurityProtocol =
            env.parse_or("KAFKA_SECURITY_PROTOCOL", SecurityProtocol::Plaintext)?;
        let sasl = if security_protocol.uses_sasl() {
            Some(SaslSettings {
                mechanism: env.parse_or("KAFKA_SASL_MECHANISM", SaslMechanism::ScramSha256)?,
                username: env.required(
                    "KAFKA_SASL_USERNAME",
                    "SASL user name for the Kafka brokers",
                )?,
                password: SecretString::from(
                    env.required("KAFKA_SASL_PASSWORD", "SASL password for the Kafka brokers")?,
                ),
            })
        } else {
            None
        };
        let topic_prefix = env.or("KAFKA_TOPIC_PREFIX", "");
        if !topic_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(ConfigError::Invalid {
                var: "KAFKA_TOPIC_PREFIX",
                reason: "only ASCII letters, digits, '.', '_' and '-' are allowed in topic names"
                    .into(),
            });
        }
        let topic_partitions: i32 = env.parse_or("KAFKA_TOPIC_PARTITIONS", 6)?;
        if !(1..=1000).contains(&topic_partitions) {
            return Err(ConfigError::Invalid {
                var: "KAFKA_TOPIC_PARTITIONS",
                reason: "must be between 1 and 1000".into(),
            });
        }
        let replication_factor: i32 = env.parse_or("KAFKA_REPLICATION_FACTOR", 1)?;
        if !(1..=16).contains(&replication_factor) {
            return Err(ConfigError::Invalid {
                var: "KAFKA_REPLICATION_FACTOR",
                reason: "must be between 1 and 16".into(),
            });
        }

        Ok(Settings {
            database: DatabaseSettings {
                url: SecretString::from(database_url),
                max_connections,
                statement_timeout: env.millis_or(
                    "DATABASE_STATEMENT_TIMEOUT_MS",
                    DatabaseSettings::DEFAULT_STATEMENT_TIMEOUT,
                )?,
            },
            kafka: KafkaSettings {
                bootstrap_servers: env.or("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
                security_protocol,
                sasl,
                topic_prefix,
                topic_partitions,
                replication_factor,
            },
            port: env.parse_or("PORT", default_port)?,
            http: crate::server::HttpLimits::from_lookup(env)?,
        })
    }
}

/// Prints the one-line configuration error and exits with status 2 (the
/// conventional "usage/configuration" failure), before logging is set up.
pub fn exit_on_config_error(binary: &str, err: &ConfigError) -> ! {
    eprintln!("{binary}: configuration error: {err}");
    std::process::exit(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_retention_is_whole_units_or_a_fraction_down_to_a_minute() {
        let hour = Duration::from_secs(3600);
        let year = hour * 24 * 365;
        let keep =
            |v: &str| env(&[("KEEP_HOURS", v)]).retention_or("KEEP_HOURS", hour, hour * 336, year);
        assert_eq!(
            env(&[]).retention_or("KEEP_HOURS", hour, hour * 336, year),
            Ok(hour * 336)
        );
        assert_eq!(keep("24"), Ok(hour * 24));
        assert_eq!(keep("0.05"), Ok(Duration::from_secs(180)));
        for bad in ["0", "0.01", "-2", "8761", "NaN", "inf", "two"] {
            let e = keep(bad).expect_err(bad);
            assert!(e.to_string().contains("KEEP_HOURS"), "{bad}: {e}");
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::new(move |k: &str| map.get(k).cloned())
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = Settings::from_lookup(&env(&[]), 8080).unwrap();
        assert_eq!(s.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(s.kafka.security_protocol, SecurityProtocol::Plaintext);
        assert_eq!(s.kafka.topic_prefix, "");
        assert_eq!(s.port, 8080);
        assert_eq!(
            s.database.url.expose_secret(),
            "postgres://postgres@127.0.0.1:5432/todo"
        );
        assert_eq!(s.database.statement_timeout, Duration::from_secs(5));
    }

    #[test]
    fn only_the_services_that_verify_tokens_need_the_secret() {
        let err = JwtSettings::from_lookup(&env(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "JWT_SECRET is required (HS256 secret for user tokens)"
        );
        let err = JwtSettings::from_lookup(&env(&[("JWT_SECRET", "short")])).unwrap_err();
        assert!(
            err.to_string().starts_with("JWT_SECRET is invalid"),
            "{err}"
        );
        let jwt = JwtSettings::from_lookup(&env(&[
            ("JWT_SECRET", SECRET),
            ("JWT_ISSUER", "https://auth.example"),
        ]))
        .unwrap();
        assert_eq!(jwt.issuer.as_deref(), Some("https://auth.example"));
        assert_eq!(jwt.audience, None);
        assert!(!format!("{jwt:?}").contains(SECRET));
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let err = Settings::from_lookup(&env(&[("PORT", "eighty")]), 1).unwrap_err();
        assert!(err.to_string().starts_with("PORT is invalid"), "{err}");
        let err =
            Settings::from_lookup(&env(&[("DATABASE_STATEMENT_TIMEOUT_MS", "5s")]), 1).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("DATABASE_STATEMENT_TIMEOUT_MS is invalid"),
            "{err}"
        );
        let err =
            Settings::from_lookup(&env(&[("KAFKA_SECURITY_PROTOCOL", "tls")]), 1).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("KAFKA_SECURITY_PROTOCOL is invalid"),
            "{err}"
        );
    }

    #[test]
    fn sasl_needs_credentials_and_never_prints_them() {
        let err =
            Settings::from_lookup(&env(&[("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")]), 1).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Missing {
                var: "KAFKA_SASL_USERNAME",
                meaning: "SASL user name for the Kafka brokers"
            }
        );
        let s = Settings::from_lookup(
            &env(&[
                ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                ("KAFKA_SASL_USERNAME", "svc"),
                ("KAFKA_SASL_PASSWORD", "hunter2-very-secret"),
            ]),
            1,
        )
        .unwrap();
        let printed = format!("{s:?}");
        assert!(!printed.contains("hunter2-very-secret"), "{printed}");
        assert_eq!(s.kafka.sasl.unwrap().mechanism, SaslMechanism::ScramSha256);
    }
}
