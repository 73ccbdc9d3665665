//! A fresh, migrated PostgreSQL database per test, dropped afterwards.

use sqlx::{Connection, Executor, PgConnection, PgPool};
use todo_platform::config::DatabaseSettings;

pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    admin_url: String,
}

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `base` with its database name replaced by `name`.
fn with_database(base: &str, name: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = head[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(head.len());
    let mut url = format!("{}/{}", &head[..path_start], name);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

impl TestDatabase {
    /// A fresh database with the platform's schema.
    pub async fn create() -> TestDatabase {
        let db = Self::create_empty().await;
        todo_platform::db::migrate(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("migrations failed on {}: {e}", db.name));
        db
    }

    /// A fresh database with nothing in it, not even the schema.
    pub async fn create_empty() -> TestDatabase {
        let admin_url = admin_url();
        let name = format!("todo_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is not reachable: {e}"));
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .unwrap_or_else(|e| panic!("could not create database {name}: {e}"));
        let url = with_database(&admin_url, &name);
        let pool = PgPool::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("could not connect to {name}: {e}"));
        TestDatabase {
            name,
            url,
            pool,
            admin_url,
        }
    }

    /// Where the server listens (to put a [`super::TcpProxy`] in front).
    pub fn server_addr(&self) -> std::net::SocketAddr {
        use std::net::ToSocketAddrs;
        let opts: sqlx::postgres::PgConnectOptions = self
            .url
            .parse()
            .unwrap_or_else(|e| panic!("test database URL: {e}"));
        (opts.get_host(), opts.get_port())
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("{} does not resolve", opts.get_host()))
    }

    /// Settings that reach this database through `127.0.0.1:port`.
    pub fn settings_via(&self, port: u16) -> DatabaseSettings {
        DatabaseSettings::new(with_host_port(&self.url, &format!("127.0.0.1:{port}")), 10)
    }

    pub fn settings(&self) -> DatabaseSettings {
        DatabaseSettings::new(self.url.clone(), 10)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside any runtime guarantee: use a thread with its own.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = admin
                        .execute(
                            format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// `url` with its host and port replaced, credentials kept.
fn with_host_port(url: &str, host_port: &str) -> String {
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = url[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(url.len());
    let authority = &url[scheme_end..path_start];
    let userinfo = authority.rfind('@').map(|i| &authority[..=i]).unwrap_or("");
    format!(
        "{}{userinfo}{host_port}{}",
        &url[..scheme_end],
        &url[path_start..]
    )
}

#[cfg(test)]
mod tests {
    use super::{with_database, with_host_port};

    #[test]
    fn hosts_are_swapped_in_urls() {
        assert_eq!(
            with_host_port("postgres://u:p@db.example:5432/x?a=b", "127.0.0.1:9"),
            "postgres://u:p@127.0.0.1:9/x?a=b"
        );
        assert_eq!(
            with_host_port("postgres://h/x", "127.0.0.1:9"),
            "postgres://127.0.0.1:9/x"
        );
    }

    #[test]
    fn database_names_are_swapped_in_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }
}
