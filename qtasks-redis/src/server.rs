//! Where the app's Redis is: one server named by its URL, or the master that a set of
//! Sentinels names, followed through failovers (`redis+sentinel://` URLs).
//!
//! Every connection the engine makes goes through a [`Server`]: the command connections as
//! [`Link`](crate::link::Link)s, and the subscriptions through [`Server::client`], which asks
//! the Sentinels again each time it is called, so a subscription that dropped with the old
//! master comes back on the new one.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, RedisError, RedisResult};

use crate::link::{Followed, Link};

/// The port a Sentinel listens on when its URL names none.
pub(crate) const SENTINEL_PORT: u16 = 26379;

/// The app's Redis: a server of its own, or a master found through Sentinels.
#[derive(Clone)]
pub(crate) enum Server {
    /// One server at a fixed address (`redis://`, `rediss://`, `unix://`).
    Direct(Box<redis::Client>),
    /// The master of a Sentinel-monitored set (`redis+sentinel://`).
    Sentinel(Arc<SentinelMaster>),
}

impl Server {
    /// A client for the server as it is now: for Sentinels, the master they name now (checked
    /// with `ROLE` to call itself master), within `timeout`.
    pub(crate) async fn client(&self) -> RedisResult<redis::Client> {
        match self {
            Server::Direct(client) => Ok((**client).clone()),
            Server::Sentinel(master) => master.client().await,
        }
    }

    /// A command connection configured by `config`, reconnecting by itself; for Sentinels, one
    /// that follows the master through failovers.
    pub(crate) async fn link(&self, config: ConnectionManagerConfig) -> RedisResult<Link> {
        match self {
            Server::Direct(client) => Ok(Link::Direct(
                ConnectionManager::new_with_config((**client).clone(), config).await?,
            )),
            Server::Sentinel(master) => Ok(Link::Followed(Arc::new(
                Followed::connect(Arc::clone(master), config).await?,
            ))),
        }
    }
}

/// The Sentinels of one master, asked for its address whenever a connection to it fails.
pub(crate) struct SentinelMaster {
    /// The master's name in the Sentinels' configuration (`sentinel monitor NAME ...`).
    pub(crate) name: String,
    /// One question at a time: the client keeps a connection to each Sentinel.
    sentinels: tokio::sync::Mutex<SentinelClient>,
    /// How long one question may take, the master's `ROLE` check included.
    timeout: Duration,
}

impl SentinelMaster {
    /// The master the Sentinels name now, checked to call itself master.
    pub(crate) async fn client(&self) -> RedisResult<redis::Client> {
        let asked = async { self.sentinels.lock().await.async_get_client().await };
        match tokio::time::timeout(self.timeout, asked).await {
            Ok(answer) => answer,
            Err(_) => Err(RedisError::from((
                redis::ErrorKind::Io,
                "the Sentinels did not name a master in time",
                format!("master `{}`, within {:?}", self.name, self.timeout),
            ))),
        }
    }
}

/// A `redis+sentinel://` URL taken apart.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    /// The Sentinels, `host:port` each.
    pub(crate) sentinels: Vec<(String, u16)>,
    /// The master's name.
    pub(crate) master: String,
    /// The database on the master.
    pub(crate) db: i64,
    /// The master's (and its replicas') user name and password, when the URL gives them.
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

/// The scheme of Sentinel URLs.
pub(crate) const SENTINEL_SCHEME: &str = "redis+sentinel://";

impl SentinelUrl {
    /// Reads `redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/master[/db]`.
    /// The error says what is wrong, without the password.
    pub(crate) fn parse(url: &str) -> Result<SentinelUrl, String> {
        const SHAPE: &str =
            "redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/master-name[/db]";
        let rest = url
            .strip_prefix(SENTINEL_SCHEME)
            .ok_or_else(|| format!("a Sentinel URL starts with `{SENTINEL_SCHEME}`"))?;
        let (authority, path) = rest.split_once('/').ok_or_else(|| {
            format!("it names no master: add `/master-name` after the Sentinels ({SHAPE})")
        })?;
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((credentials, hosts)) => (Some(credentials), hosts),
            None => (None, authority),
        };
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8()
                .map(|text| text.into_owned())
                .map_err(|_| "its user name or password is not UTF-8 once decoded".to_owned())
        };
        let (username, password) = match credentials {
            None => (None, None),
            Some(credentials) => {
                let (user, password) = match credentials.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => ("", Some(credentials)),
                };
                (
                    Some(decode(user)?).filter(|user| !user.is_empty()),
                    password.map(decode).transpose()?,
                )
            }
        };
        let mut sentinels = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err(format!("it has an empty Sentinel address ({SHAPE})"));
            }
            let (name, port) = match host.rsplit_once(':') {
                Some((name, port)) => (
                    name,
                    port.parse::<u16>().map_err(|_| {
                        format!("the port of Sentinel `{host}` is not a port number")
                    })?,
                ),
                None => (host, SENTINEL_PORT),
            };
            let name = name.trim_start_matches('[').trim_end_matches(']');
            if name.is_empty() {
                return Err(format!("Sentinel `{host}` has no host name"));
            }
            sentinels.push((name.to_owned(), port));
        }
        let path = path.split('?').next().unwrap_or_default();
        let (master, db) = match path.split_once('/') {
            Some((master, "")) => (master, 0),
            Some((master, db)) => (
                master,
                db.parse::<i64>()
                    .ok()
                    .filter(|db| *db >= 0)
                    .ok_or_else(|| format!("the database `{db}` is not a number ({SHAPE})"))?,
            ),
            None => (path, 0),
        };
        if master.is_empty() {
            return Err(format!(
                "it names no master: add `/master-name` after the Sentinels ({SHAPE})"
            ));
        }
        Ok(SentinelUrl {
            sentinels,
            master: decode(master)?,
            db,
            username,
            password,
        })
    }

    /// The Sentinels' client of this master; `timeout` bounds each question to them.
    pub(crate) fn open(self, timeout: Duration) -> RedisResult<SentinelMaster> {
        let addresses = self
            .sentinels
            .into_iter()
            .map(|(host, port)| ConnectionAddr::Tcp(host, port));
        let mut builder =
            SentinelClientBuilder::new(addresses, &self.master, SentinelServerType::Master)?
                .set_client_to_redis_db(self.db);
        if let Some(username) = &self.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        Ok(SentinelMaster {
            name: self.master,
            sentinels: tokio::sync::Mutex::new(builder.build()?),
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_are_read() {
        let url = SentinelUrl::parse("redis+sentinel://a:26380,b,[::1]:7/mymaster/2").unwrap();
        assert_eq!(
            url.sentinels,
            vec![
                ("a".to_owned(), 26380),
                ("b".to_owned(), SENTINEL_PORT),
                ("::1".to_owned(), 7)
            ]
        );
        assert_eq!((url.master.as_str(), url.db), ("mymaster", 2));
        assert_eq!((url.username, url.password), (None, None));

        let url = SentinelUrl::parse("redis+sentinel://app:p%40ss@h:1/m").unwrap();
        assert_eq!(url.username.as_deref(), Some("app"));
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        assert_eq!((url.master.as_str(), url.db), ("m", 0));

        let url = SentinelUrl::parse("redis+sentinel://:secret@h/m/").unwrap();
        assert_eq!(
            (url.username, url.password.as_deref()),
            (None, Some("secret"))
        );
    }

    #[test]
    fn bad_sentinel_urls_say_what_is_wrong() {
        let wrong = |url: &str| SentinelUrl::parse(url).unwrap_err();
        assert!(wrong("redis+sentinel://h:1").contains("names no master"));
        assert!(wrong("redis+sentinel://h:1/").contains("names no master"));
        assert!(wrong("redis+sentinel://h:x/m").contains("`h:x` is not a port number"));
        assert!(wrong("redis+sentinel://h,,g/m").contains("empty Sentinel address"));
        assert!(wrong("redis+sentinel://h/m/zero").contains("`zero` is not a number"));
        assert!(!wrong("redis+sentinel://u:secret@h:x/m").contains("secret"));
    }
}
