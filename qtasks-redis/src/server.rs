//! Where the app's Redis is: one server named by its URL, the master that a set of Sentinels
//! names, followed through failovers (`redis+sentinel://` URLs), or a Redis Cluster
//! (`redis+cluster://` URLs).
//!
//! Every connection the engine makes goes through a [`Server`]: the command connections as
//! [`Link`](crate::link::Link)s, and the subscriptions through [`Server::client`], which asks
//! the Sentinels again each time it is called (so a subscription that dropped with the old
//! master comes back on the new one), or takes the next of a cluster's nodes (a message
//! published on any node of a cluster reaches the subscribers of every node).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, RedisError, RedisResult};

use crate::link::{Behind, Followed, Link};

/// The port a Sentinel listens on when its URL names none.
pub(crate) const SENTINEL_PORT: u16 = 26379;

/// The app's Redis: a server of its own, or a master found through Sentinels.
#[derive(Clone)]
pub(crate) enum Server {
    /// One server at a fixed address (`redis://`, `rediss://`, `unix://`).
    Direct(Box<redis::Client>),
    /// The master of a Sentinel-monitored set (`redis+sentinel://`).
    Sentinel(Arc<SentinelMaster>),
    /// The nodes of a Redis Cluster (`redis+cluster://`).
    Cluster(Arc<ClusterNodes>),
}

/// How long a command connection waits to connect, and for an answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) response: Duration,
}

impl Timeouts {
    /// A connection manager's settings: two quick reconnection tries per failed command, then
    /// the error (the engine's callers pace their own tries).
    fn manager(self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect))
            .set_response_timeout(Some(self.response))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2))
    }
}

impl Timeouts {
    /// A plain connection's settings (a Sentinel link's: it never reconnects by itself).
    fn multiplexed(self) -> redis::AsyncConnectionConfig {
        redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect))
            .set_response_timeout(Some(self.response))
    }
}

impl Server {
    /// A client for the server as it is now: for Sentinels, the master they name now (checked
    /// with `ROLE` to call itself master), within `timeout`.
    pub(crate) async fn client(&self) -> RedisResult<redis::Client> {
        match self {
            Server::Direct(client) => Ok((**client).clone()),
            Server::Sentinel(master) => master.client().await,
            Server::Cluster(nodes) => nodes.next_seed(),
        }
    }

    /// A command connection, reconnecting by itself; for Sentinels, one that follows the master
    /// through failovers; for a cluster, one that routes each command to its slot's node, and
    /// `SCAN` to the node of `home` (the key whose slot holds the app).
    pub(crate) async fn link(&self, timeouts: Timeouts, home: &str) -> RedisResult<Link> {
        match self {
            Server::Direct(client) => Ok(Link::Direct(
                ConnectionManager::new_with_config((**client).clone(), timeouts.manager()).await?,
            )),
            Server::Sentinel(master) => Ok(Link::Followed(Arc::new(
                Followed::connect(Behind::Sentinel {
                    master: Arc::clone(master),
                    config: timeouts.multiplexed(),
                })
                .await?,
            ))),
            Server::Cluster(nodes) => Ok(Link::Followed(Arc::new(
                Followed::connect(Behind::Cluster {
                    nodes: Arc::clone(nodes),
                    timeouts,
                    home: redis::cluster_routing::Route::with_key(
                        home,
                        redis::cluster_routing::SlotAddr::Master,
                    ),
                })
                .await?,
            ))),
        }
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Server::Cluster(_))
    }
}

/// The nodes a `redis+cluster://` URL names: where the cluster client starts (it learns the
/// rest from them), and where subscriptions connect.
pub(crate) struct ClusterNodes {
    nodes: Vec<redis::ConnectionInfo>,
    username: Option<String>,
    password: Option<String>,
    /// The seed the next subscription tries: a subscription that dropped with its node comes
    /// back on the next one.
    next: AtomicUsize,
}

impl ClusterNodes {
    fn next_seed(&self) -> RedisResult<redis::Client> {
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len();
        redis::Client::open(self.nodes[at].clone())
    }

    pub(crate) async fn connect(
        &self,
        timeouts: Timeouts,
    ) -> RedisResult<redis::cluster_async::ClusterConnection> {
        let mut builder = redis::cluster::ClusterClientBuilder::new(self.nodes.clone())
            .connection_timeout(timeouts.connect)
            .response_timeout(timeouts.response)
            .retries(4);
        if let Some(username) = &self.username {
            builder = builder.username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.password(password);
        }
        builder.build()?.get_async_connection().await
    }
}

/// The scheme of Redis Cluster URLs.
pub(crate) const CLUSTER_SCHEME: &str = "redis+cluster://";

impl ClusterNodes {
    /// Reads `redis+cluster://[user[:password]@]host[:port][,host[:port]...][/]`: the port
    /// defaults to 6379, and a database other than 0 is refused (a cluster has only 0).
    pub(crate) fn parse(url: &str) -> Result<ClusterNodes, String> {
        const SHAPE: &str = "redis+cluster://[user[:password]@]host[:port][,host[:port]...]";
        let parts = HostsUrl::parse(url, CLUSTER_SCHEME, "node", 6379)
            .map_err(|why| format!("{why} ({SHAPE})"))?;
        if !matches!(parts.path, "" | "0") {
            return Err(format!(
                "a Redis Cluster has only database 0, and the URL names `{}` ({SHAPE})",
                parts.path
            ));
        }
        if let Some((name, _)) = parts.query.first() {
            return Err(format!(
                "it has an unknown parameter `{name}`: a cluster URL takes none ({SHAPE})"
            ));
        }
        let nodes = parts
            .hosts
            .into_iter()
            .map(|(host, port)| {
                let mut settings = redis::RedisConnectionInfo::default();
                if let Some(username) = &parts.username {
                    settings = settings.set_username(username);
                }
                if let Some(password) = &parts.password {
                    settings = settings.set_password(password);
                }
                redis::IntoConnectionInfo::into_connection_info(ConnectionAddr::Tcp(host, port))
                    .map(|info| info.set_redis_settings(settings))
                    .map_err(|why| format!("{why}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ClusterNodes {
            nodes,
            username: parts.username,
            password: parts.password,
            next: AtomicUsize::new(0),
        })
    }
}

/// The Sentinels of one master, asked for its address whenever a connection to it fails.
pub(crate) struct SentinelMaster {
    /// The master's name in the Sentinels' configuration (`sentinel monitor NAME ...`).
    pub(crate) name: String,
    /// Where the Sentinels are, with their own user name and password.
    sentinels: Vec<redis::ConnectionInfo>,
    /// The master's database, user name and password.
    settings: redis::RedisConnectionInfo,
    /// How long one question may take, the master's `ROLE` check included.
    timeout: Duration,
}

/// What one Sentinel says of the master: its address, the configuration epoch of that word
/// (each failover raises it), and whether the master is being replaced (a failover in
/// progress, or the Sentinels agree it is down).
struct Named {
    epoch: u64,
    host: String,
    port: u16,
    replacing: bool,
}

impl SentinelMaster {
    /// The master the Sentinels name now, checked to call itself master.
    ///
    /// Every Sentinel is asked (`SENTINEL MASTER`), and the one that knows the latest failover
    /// (the highest configuration epoch) is believed; while it says a failover is in progress
    /// or the master is down (`failover_in_progress`, `o_down`), no master is named yet. The
    /// old master may be back and still call itself master (with its old data) until the
    /// Sentinels make it a replica, and a Sentinel names it until the failover ends, or until
    /// it hears of it: believing the first Sentinel that answers, and checking `ROLE`, could
    /// lead the app to a server whose writes will be lost.
    pub(crate) async fn client(&self) -> RedisResult<redis::Client> {
        match tokio::time::timeout(self.timeout, self.find()).await {
            Ok(answer) => answer,
            Err(_) => Err(RedisError::from((
                redis::ErrorKind::Io,
                "the Sentinels did not name a master in time",
                format!("master `{}`, within {:?}", self.name, self.timeout),
            ))),
        }
    }

    async fn find(&self) -> RedisResult<redis::Client> {
        // Each Sentinel within the lookup's budget: one that drops packets must not hold the
        // others' answers past it.
        let asked = self.sentinels.iter().map(|at| async move {
            match tokio::time::timeout(self.timeout, self.ask(at)).await {
                Ok(answer) => answer,
                Err(_) => Err(RedisError::from((
                    redis::ErrorKind::Io,
                    "a Sentinel did not answer in time",
                    format!("{}", at.addr()),
                ))),
            }
        });
        let answers = futures_util::future::join_all(asked).await;
        let mut named = Vec::new();
        let mut failure: Option<RedisError> = None;
        for answer in answers {
            match answer {
                Ok(one) => named.push(one),
                // An I/O error is kept over any other: the caller retries those.
                Err(error) if failure.as_ref().is_none_or(|kept| !kept.is_io_error()) => {
                    failure = Some(error);
                }
                Err(_) => {}
            }
        }
        // A majority must answer: the few that answer may be the ones that have not heard of
        // the last failover.
        if named.len() * 2 <= self.sentinels.len() {
            return Err(failure.unwrap_or_else(|| {
                RedisError::from((
                    redis::ErrorKind::Io,
                    "too few Sentinels answered",
                    format!("master `{}`", self.name),
                ))
            }));
        }
        let top = named.iter().map(|one| one.epoch).max().unwrap_or_default();
        let latest: Vec<&Named> = named.iter().filter(|one| one.epoch == top).collect();
        // Before the switch every Sentinel reports the same epoch, and only the leader says
        // it is failing over: any of them saying so, or naming another server, means wait.
        let first = latest[0];
        if latest.iter().any(|one| {
            one.replacing || (one.host.as_str(), one.port) != (first.host.as_str(), first.port)
        }) {
            return Err(RedisError::from((
                redis::ErrorKind::Io,
                "the Sentinels are replacing the master",
                format!("master `{}` at {}:{}", self.name, first.host, first.port),
            )));
        }
        let (host, port) = (first.host.clone(), first.port);
        let address = ConnectionAddr::Tcp(host.clone(), port);
        let client = redis::Client::open(
            redis::IntoConnectionInfo::into_connection_info(address)?
                .set_redis_settings(self.settings.clone()),
        )?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut connection).await?;
        match role.first() {
            Some(redis::Value::BulkString(role)) if role == b"master" => Ok(client),
            _ => Err(RedisError::from((
                redis::ErrorKind::Io,
                "the server the Sentinels name master is no master (yet)",
                format!("master `{}` at {host}:{port}", self.name),
            ))),
        }
    }

    /// One Sentinel's word on the master (`SENTINEL MASTER name`).
    async fn ask(&self, sentinel: &redis::ConnectionInfo) -> RedisResult<Named> {
        let client = redis::Client::open(sentinel.clone())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let fields: std::collections::HashMap<String, String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(&self.name)
            .query_async(&mut connection)
            .await?;
        let field = |name: &str| {
            fields.get(name).ok_or_else(|| {
                RedisError::from((
                    redis::ErrorKind::Io,
                    "a Sentinel's answer lacks a field",
                    format!("`{name}` of master `{}`", self.name),
                ))
            })
        };
        let number = |name: &str| -> RedisResult<u64> {
            field(name)?.parse().map_err(|_| {
                RedisError::from((
                    redis::ErrorKind::Io,
                    "a Sentinel's answer has a field that is no number",
                    format!("`{name}` of master `{}`", self.name),
                ))
            })
        };
        let flags = field("flags")?;
        Ok(Named {
            replacing: flags
                .split(',')
                .any(|flag| matches!(flag, "failover_in_progress" | "o_down")),
            epoch: number("config-epoch")?,
            host: field("ip")?.clone(),
            port: u16::try_from(number("port")?).map_err(|_| {
                RedisError::from((
                    redis::ErrorKind::Io,
                    "a Sentinel names a port out of range",
                    format!("master `{}`", self.name),
                ))
            })?,
        })
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
    /// The Sentinels' own user name and password (`?sentinel_username=..&sentinel_password=..`),
    /// for Sentinels that ask for one (`requirepass` in their configuration).
    pub(crate) sentinel_username: Option<String>,
    pub(crate) sentinel_password: Option<String>,
}

/// The scheme of Sentinel URLs.
pub(crate) const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// The parts of a URL that names several hosts:
/// `scheme://[user[:password]@]host[:port][,host[:port]...][/path]`.
struct HostsUrl<'a> {
    hosts: Vec<(String, u16)>,
    /// What follows the hosts' `/`, without a query.
    path: &'a str,
    /// The query's `name=value` pairs, values percent-decoded.
    query: Vec<(&'a str, String)>,
    username: Option<String>,
    password: Option<String>,
}

impl<'a> HostsUrl<'a> {
    /// Reads the hosts (`what` names them in errors, `port` is the default port) and the user
    /// name and password (percent-decoded). The error says what is wrong, without the password.
    fn parse(url: &'a str, scheme: &str, what: &str, port: u16) -> Result<Self, String> {
        let rest = url
            .strip_prefix(scheme)
            .ok_or_else(|| format!("the URL does not start with `{scheme}`"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        // A `?` in a password would start the query early, and the password's end be read as
        // a parameter: say so without echoing any of it.
        if query.contains('@') {
            return Err(
                "a `?` in the user name or password, or an `@` in a parameter, must be percent-encoded (`%3F`, `%40`)"
                    .to_owned(),
            );
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let query = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                decode(value).map(|value| (name, value))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A `/` in a password would end the hosts early, and the rest would be read as hosts:
        // say so without echoing any of it.
        if path.contains('@') {
            return Err(
                "a `/` in the user name or password, or an `@` in the master name, must be percent-encoded (`%2F`, `%40`)"
                    .to_owned(),
            );
        }
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((credentials, hosts)) => (Some(credentials), hosts),
            None => (None, authority),
        };
        let (username, password) = match credentials {
            None => (None, None),
            Some(credentials) => {
                let (user, password) = credentials.split_once(':').unwrap_or(("", credentials));
                (
                    Some(decode(user)?).filter(|user| !user.is_empty()),
                    Some(decode(password)?),
                )
            }
        };
        let mut parsed = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err(format!("it has an empty {what} address"));
            }
            // `[v6]:port`, `[v6]`, `name:port`, `name`.
            let (name, given) = match host.rsplit_once(':') {
                Some((name, given)) if !host.ends_with(']') => (name, Some(given)),
                _ => (host, None),
            };
            let port = match given {
                Some(given) => given
                    .parse::<u16>()
                    .map_err(|_| format!("the port of {what} `{host}` is not a port number"))?,
                None => port,
            };
            let name = name.trim_start_matches('[').trim_end_matches(']');
            if name.is_empty() {
                return Err(format!("{what} `{host}` has no host name"));
            }
            parsed.push((name.to_owned(), port));
        }
        Ok(HostsUrl {
            hosts: parsed,
            path,
            query,
            username,
            password,
        })
    }
}

/// Percent-decodes a part of a URL.
fn decode(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| "a user name, password or master name is not UTF-8 once decoded".to_owned())
}

impl SentinelUrl {
    /// Reads `redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/master[/db]`,
    /// with `?sentinel_username=..&sentinel_password=..` for the Sentinels' own. The error says
    /// what is wrong, without the password.
    pub(crate) fn parse(url: &str) -> Result<SentinelUrl, String> {
        const SHAPE: &str = "redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/master-name[/db][?sentinel_password=...]";
        let parts = HostsUrl::parse(url, SENTINEL_SCHEME, "Sentinel", SENTINEL_PORT)
            .map_err(|why| format!("{why} ({SHAPE})"))?;
        let (master, db) = match parts.path.split_once('/') {
            Some((master, "")) => (master, 0),
            Some((master, db)) => (
                master,
                db.parse::<i64>()
                    .ok()
                    .filter(|db| *db >= 0)
                    .ok_or_else(|| format!("the database `{db}` is not a number ({SHAPE})"))?,
            ),
            None => (parts.path, 0),
        };
        if master.is_empty() {
            return Err(format!(
                "it names no master: add `/master-name` after the Sentinels ({SHAPE})"
            ));
        }
        let mut sentinel_username = None;
        let mut sentinel_password = None;
        for (name, value) in parts.query {
            match name {
                "sentinel_username" => sentinel_username = Some(value),
                "sentinel_password" => sentinel_password = Some(value),
                other => {
                    return Err(format!(
                        "it has an unknown parameter `{other}`: a Sentinel URL takes `sentinel_username` and `sentinel_password` ({SHAPE})"
                    ));
                }
            }
        }
        Ok(SentinelUrl {
            sentinels: parts.hosts,
            master: decode(master)?,
            db,
            username: parts.username,
            password: parts.password,
            sentinel_username,
            sentinel_password,
        })
    }

    /// The Sentinels' client of this master; `timeout` bounds each question to them.
    pub(crate) fn open(self, timeout: Duration) -> RedisResult<SentinelMaster> {
        let mut sentinel_settings = redis::RedisConnectionInfo::default();
        if let Some(username) = &self.sentinel_username {
            sentinel_settings = sentinel_settings.set_username(username);
        }
        if let Some(password) = &self.sentinel_password {
            sentinel_settings = sentinel_settings.set_password(password);
        }
        let sentinels = self
            .sentinels
            .into_iter()
            .map(|(host, port)| {
                redis::IntoConnectionInfo::into_connection_info(ConnectionAddr::Tcp(host, port))
                    .map(|info| info.set_redis_settings(sentinel_settings.clone()))
            })
            .collect::<RedisResult<Vec<_>>>()?;
        let mut settings = redis::RedisConnectionInfo::default().set_db(self.db);
        if let Some(username) = &self.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        Ok(SentinelMaster {
            name: self.master,
            sentinels,
            settings,
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

        let url = SentinelUrl::parse(
            "redis+sentinel://h/m/1?sentinel_username=s&sentinel_password=p%26q",
        )
        .unwrap();
        assert_eq!(url.db, 1);
        assert_eq!(url.sentinel_username.as_deref(), Some("s"));
        assert_eq!(url.sentinel_password.as_deref(), Some("p&q"));
    }

    #[test]
    fn cluster_urls_are_read() {
        let nodes = ClusterNodes::parse("redis+cluster://:s%40@a:7000,b/").unwrap();
        let addresses: Vec<String> = nodes.nodes.iter().map(|n| n.addr().to_string()).collect();
        assert_eq!(addresses, ["a:7000", "b:6379"]);
        assert_eq!(nodes.password.as_deref(), Some("s@"));
        assert_eq!(nodes.nodes[1].redis_settings().password(), Some("s@"));
        let wrong = |url: &str| ClusterNodes::parse(url).err().unwrap();
        assert!(wrong("redis+cluster://a:7000/3").contains("only database 0"));
        assert!(wrong("redis+cluster://a:70000").contains("`a:70000` is not a port number"));
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
        assert!(
            wrong("redis+sentinel://h/m?sentinel_pasword=x")
                .contains("unknown parameter `sentinel_pasword`")
        );
        let asked = wrong("redis+sentinel://u:s3cr?et@h:1/m");
        assert!(asked.contains("percent-encoded"), "{asked}");
        assert!(!asked.contains("s3cr"), "{asked}");
        let slashed = wrong("redis+sentinel://u:s3cr/et@h:1/m");
        assert!(slashed.contains("percent-encoded"), "{slashed}");
        assert!(!slashed.contains("s3cr"), "{slashed}");
    }
}
