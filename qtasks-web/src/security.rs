//! What every request passes through: the peer and host checks, the token, CSRF for actions,
//! and the headers every response carries.
//!
//! - **Token.** With a token set, a request carries it as `Authorization: Bearer <token>` (API
//!   clients) or in the `qtasks_token` cookie that `/login` sets (`HttpOnly`,
//!   `SameSite=Strict`). The cookie never holds the token: it holds an HMAC-SHA256 of the token
//!   under a key drawn at random when the [`Web`](crate::Web) is made, so a cookie that leaks
//!   (a backup of a browser profile, a proxy's log) does not give the token away, and it is
//!   worthless once the server restarts or its token changes. Both are compared in constant
//!   time. A browser without either is sent to `/login`, anything else gets 401.
//! - **Loopback.** Without a token the server only listens on loopback, and it answers only
//!   connections whose peer address is loopback (the router served without `ConnectInfo`, or
//!   reached through a port forwarded from the network, answers nothing), only requests
//!   addressed to a loopback name (a web page elsewhere cannot reach it by pointing a name of
//!   its own at 127.0.0.1: DNS rebinding), and no request that a proxy says it forwarded
//!   (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`). A reverse proxy on this machine connects
//!   from loopback, and one that adds none of those headers cannot be told from a local
//!   browser: a dashboard behind a proxy needs a token.
//! - **CSRF.** Every action is a POST carrying this process's CSRF token (a form field or the
//!   `X-Qtasks-Csrf` header), unless it carries the bearer token itself; a POST another site
//!   sends (`Sec-Fetch-Site: cross-site`, or an `Origin` that is not this host) is refused.
//! - **Headers.** A Content-Security-Policy that allows this server's own scripts, styles and
//!   images and nothing else (no inline script, no framing), `nosniff`, `no-store`, and
//!   `same-origin` referrers.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use crate::Shared;

/// The name of the cookie `/login` sets.
pub(crate) const TOKEN_COOKIE: &str = "qtasks_token";
/// The header an API client sends the CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-qtasks-csrf";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'self'; frame-ancestors 'none'";

/// Equal in time whatever the first differing byte: a token is never guessed a byte at a time.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// A new random secret (256 bits, hex), for the CSRF token and the cookie's key.
pub(crate) fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A new key for the login cookie's HMAC, random for each [`Web`](crate::Web).
pub(crate) fn cookie_key() -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, random_secret().as_bytes())
}

/// The login cookie's value for `token`: HMAC-SHA256 of it under `key`, in hex. Derived, so the
/// cookie never carries the token; keyed, so it cannot be computed from the token elsewhere.
pub(crate) fn cookie_value(key: &ring::hmac::Key, token: &str) -> String {
    ring::hmac::sign(key, token.as_bytes())
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// The value of the cookie `name` the request carries (parsed by the `cookie` crate; a
/// malformed pair is skipped).
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == name)
        .map(|cookie| cookie.value().to_owned())
}

/// The `Set-Cookie` value `/login` answers with: the token's HMAC (see the module docs), for
/// every path, out of scripts' reach, never sent by another site's request.
pub(crate) fn login_cookie(value: String) -> String {
    cookie::Cookie::build((TOKEN_COOKIE, value))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .build()
        .to_string()
}

/// How a request was let in, for the actions' log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum By {
    /// The `Authorization: Bearer` header carried the token.
    Token,
    /// The login cookie carried the token's HMAC.
    Cookie,
    /// No token is set, and the request came from loopback to a loopback name.
    Loopback,
}

impl std::fmt::Display for By {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            By::Token => "bearer token",
            By::Cookie => "login cookie",
            By::Loopback => "loopback, no token set",
        })
    }
}

/// Who sent a request, as the guard saw it; every request past the guard carries it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    /// The peer address of the connection (none when the router is served without
    /// `ConnectInfo`: then only a token lets a request in).
    pub(crate) peer: Option<SocketAddr>,
    /// How it was let in (none on the open routes: `/login`, `/assets`).
    pub(crate) by: Option<By>,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.peer {
            Some(peer) => write!(f, "{peer}")?,
            None => f.write_str("an unknown peer")?,
        }
        match self.by {
            Some(by) => write!(f, " ({by})"),
            None => f.write_str(" (no credential)"),
        }
    }
}

/// How the request proves it may come in, if it does: always loopback without a token (the
/// guard has checked the peer and the host by then).
pub(crate) fn credential(shared: &Shared, headers: &HeaderMap) -> Option<By> {
    let Some(expected) = shared.token.as_deref() else {
        return Some(By::Loopback);
    };
    if let Some(given) = bearer(headers) {
        return constant_time_eq(given.as_bytes(), expected.as_bytes()).then_some(By::Token);
    }
    let given = cookie(headers, TOKEN_COOKIE)?;
    let wanted = cookie_value(&shared.cookie_key, expected);
    constant_time_eq(given.as_bytes(), wanted.as_bytes()).then_some(By::Cookie)
}

/// Whether `host` (a `Host` header) names this machine's loopback interface.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The headers a proxy adds to say whose request it forwards.
const FORWARDED_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// Why a request is refused when no token is set, if it is: it must come from a loopback peer
/// (not only name a loopback host, which anyone's request forwarded to this machine can), be
/// addressed to a loopback name (DNS rebinding), and not say it was forwarded by a proxy.
pub(crate) fn refuse_without_token(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Option<(StatusCode, &'static str)> {
    // `to_canonical`: a dual-stack socket shows an IPv4 peer as `::ffff:127.0.0.1`.
    if !peer.is_some_and(|peer| peer.ip().to_canonical().is_loopback()) {
        return Some((
            StatusCode::FORBIDDEN,
            "without a token this server answers only connections from this machine's loopback\n",
        ));
    }
    if FORWARDED_HEADERS
        .iter()
        .any(|name| headers.contains_key(*name))
    {
        return Some((
            StatusCode::FORBIDDEN,
            "without a token this server answers no request forwarded by a proxy: give the server a token\n",
        ));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !is_loopback_host(host) {
        return Some((
            StatusCode::MISDIRECTED_REQUEST,
            "without a token this server answers only requests to 127.0.0.1, [::1] or localhost\n",
        ));
    }
    None
}

/// Checks the peer, the host and the token, and notes who the caller is for the handlers
/// ([`headers`] adds what every response carries, refusals too).
pub(crate) async fn guard(shared: Shared, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    let headers = request.headers();
    if shared.token.is_none()
        && let Some(refusal) = refuse_without_token(peer, headers)
    {
        tracing::debug!(?peer, "dashboard request refused: {}", refusal.1.trim());
        return refusal.into_response();
    }
    let path = request.uri().path();
    let open = path == "/login" || path.starts_with("/assets/");
    let by = credential(&shared, headers);
    if !open && by.is_none() {
        let wants_page = request.method() == Method::GET
            && !path.starts_with("/api/")
            && path != "/metrics"
            && path != "/events";
        let response = if wants_page {
            Redirect::to(&crate::mount::path("login")).into_response()
        } else {
            let mut response =
                (StatusCode::UNAUTHORIZED, "a valid token is required\n").into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        };
        return response;
    }
    // Read-only refuses whatever may change something (a route of the caller's with PUT or
    // DELETE too); signing in stays open.
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if shared.read_only && !safe && path != "/login" {
        tracing::info!(?peer, path, "dashboard action refused: read-only");
        return (StatusCode::FORBIDDEN, "this dashboard is read-only\n").into_response();
    }
    request.extensions_mut().insert(Caller { peer, by });
    next.run(request).await
}

/// Why an action is refused before it runs, if it is.
pub(crate) fn refuse_cross_site(
    shared: &Shared,
    headers: &HeaderMap,
    form_token: Option<&str>,
) -> Option<Response> {
    let refused = |why: &'static str| Some((StatusCode::FORBIDDEN, why).into_response());
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes() == b"cross-site")
    {
        return refused("actions from another site are refused\n");
    }
    if let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        let origin = origin.to_str().unwrap_or_default();
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if origin_host.as_bytes() != host.as_bytes() {
            return refused("actions from another origin are refused\n");
        }
    }
    // The bearer token itself is proof enough: no other site can make a browser send it.
    if shared.token.is_some() && credential(shared, headers) == Some(By::Token) {
        return None;
    }
    let given = form_token.or_else(|| headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), shared.csrf.as_bytes()) => None,
        _ => refused("this action needs the page's CSRF token (reload the page and try again)\n"),
    }
}

/// The headers every response carries (refusals too: these layers wrap the guard), set with
/// `tower-http`: the Content-Security-Policy, `nosniff`, `no-store` unless a handler chose
/// otherwise, `same-origin` referrers (not `no-referrer`: with it a browser sends
/// `Origin: null` on the forms' POSTs, and the origin check could not tell them from another
/// site's), and no framing.
pub(crate) fn headers(router: axum::Router) -> axum::Router {
    use tower_http::set_header::SetResponseHeaderLayer as Set;
    router
        .layer(Set::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(Set::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(Set::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(Set::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .layer(Set::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cres"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret!"));
        assert!(!constant_time_eq(b"", b"s3cret"));
    }

    #[test]
    fn only_loopback_names_pass_without_a_token() {
        for host in [
            "127.0.0.1:8000",
            "localhost:1",
            "[::1]:80",
            "127.0.0.1",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:8000",
            "10.0.0.1:80",
            "",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; qtasks_token=abc; b=2"),
        );
        assert_eq!(cookie(&headers, TOKEN_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    fn host(host: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static(host));
        headers
    }

    #[test]
    fn without_a_token_only_loopback_peers_pass_whatever_the_host_says() {
        let peer = |text: &str| Some(text.parse::<SocketAddr>().unwrap());
        let local = host("localhost:8000");
        for loopback in [
            "127.0.0.1:40000",
            "127.0.0.2:1",
            "[::1]:40000",
            "[::ffff:127.0.0.1]:9",
        ] {
            assert_eq!(
                refuse_without_token(peer(loopback), &local),
                None,
                "{loopback}"
            );
        }
        // A request from the network forwarded to this machine keeps `Host: localhost`; a peer
        // that is not loopback, or an unknown one, is refused all the same.
        for (from, headers) in [
            (peer("192.0.2.7:40000"), host("localhost:8000")),
            (peer("[2001:db8::1]:40000"), host("127.0.0.1:8000")),
            (None, host("localhost")),
        ] {
            let refused = refuse_without_token(from, &headers).map(|(status, _)| status);
            assert_eq!(refused, Some(StatusCode::FORBIDDEN), "{from:?}");
        }
        // A proxy on this machine says whose request it forwards.
        for name in FORWARDED_HEADERS {
            let mut headers = host("localhost:8000");
            headers.insert(name, HeaderValue::from_static("192.0.2.7"));
            let refused = refuse_without_token(peer("127.0.0.1:1"), &headers);
            assert_eq!(
                refused.map(|(s, _)| s),
                Some(StatusCode::FORBIDDEN),
                "{name}"
            );
        }
        assert_eq!(
            refuse_without_token(peer("127.0.0.1:1"), &host("rebound.example")).map(|(s, _)| s),
            Some(StatusCode::MISDIRECTED_REQUEST)
        );
    }

    #[test]
    fn the_cookie_is_a_keyed_digest_of_the_token_not_the_token() {
        let key = cookie_key();
        let token = "s3cret-token";
        let value = cookie_value(&key, token);
        assert_eq!(value.len(), 64, "{value}");
        let hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(!value.contains(token) && !value.contains(&hex), "{value}");
        assert_eq!(
            value,
            cookie_value(&key, token),
            "the same for the same key"
        );
        assert_ne!(
            value,
            cookie_value(&cookie_key(), token),
            "another key, another value"
        );
        assert_ne!(value, cookie_value(&key, "s3cret-tokem"));
    }
}
