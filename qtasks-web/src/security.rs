//! What every request passes through: the token, the host check, CSRF for actions, and the
//! headers every response carries.
//!
//! - **Token.** With a token set, a request carries it as `Authorization: Bearer <token>` (API
//!   clients) or in the `qtasks_token` cookie that `/login` sets (`HttpOnly`,
//!   `SameSite=Strict`, holding the token hex-encoded, so any token fits in a cookie); both
//!   are compared in constant time. A browser without it is sent to
//!   `/login`, anything else gets 401.
//! - **Host.** Without a token the server only listens on loopback, and it answers only
//!   requests addressed to a loopback name: a web page elsewhere cannot reach it by pointing
//!   a name of its own at 127.0.0.1 (DNS rebinding).
//! - **CSRF.** Every action is a POST carrying this process's CSRF token (a form field or the
//!   `X-Qtasks-Csrf` header), unless it carries the bearer token itself; a POST another site
//!   sends (`Sec-Fetch-Site: cross-site`, or an `Origin` that is not this host) is refused.
//! - **Headers.** A Content-Security-Policy that allows this server's own scripts, styles and
//!   images and nothing else (no inline script, no framing), `nosniff`, `no-store`, and
//!   `same-origin` referrers.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use crate::Shared;

/// The name of the cookie `/login` sets.
pub(crate) const TOKEN_COOKIE: &str = "qtasks_token";
/// The header an API client sends the CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-qtasks-csrf";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Equal in time whatever the first differing byte: a token is never guessed a byte at a time.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (i, byte) in a.iter().enumerate() {
        difference |= usize::from(byte ^ b.get(i).copied().unwrap_or(0));
    }
    difference == 0
}

/// A new random secret (256 bits, hex), for the CSRF token.
pub(crate) fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// Whether the request carries the token (header or cookie); always true without one.
pub(crate) fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(expected) = shared.token.as_deref() else {
        return true;
    };
    if let Some(given) = bearer(headers) {
        return constant_time_eq(given.as_bytes(), expected.as_bytes());
    }
    cookie(headers, TOKEN_COOKIE)
        .is_some_and(|given| constant_time_eq(given.as_bytes(), cookie_value(expected).as_bytes()))
}

/// The login cookie's value for `token`: its bytes in hex (a cookie cannot hold spaces,
/// semicolons or quotes, a token may).
pub(crate) fn cookie_value(token: &str) -> String {
    token.bytes().map(|byte| format!("{byte:02x}")).collect()
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

/// Checks the host and the token, and adds the headers every response carries.
pub(crate) async fn guard(shared: Shared, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if shared.token.is_none() {
        let host = headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if !is_loopback_host(host) {
            return with_headers(
                (
                    StatusCode::MISDIRECTED_REQUEST,
                    "without a token this server answers only requests to 127.0.0.1, [::1] or localhost\n",
                )
                    .into_response(),
            );
        }
    }
    let path = request.uri().path();
    let open = path == "/login" || path.starts_with("/assets/");
    if !open && !authorized(&shared, headers) {
        let wants_page = request.method() == Method::GET
            && !path.starts_with("/api/")
            && path != "/metrics"
            && path != "/events";
        let response = if wants_page {
            Redirect::to("/login").into_response()
        } else {
            let mut response =
                (StatusCode::UNAUTHORIZED, "a valid token is required\n").into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        };
        return with_headers(response);
    }
    with_headers(next.run(request).await)
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
    if shared.token.is_some() && bearer(headers).is_some() && authorized(shared, headers) {
        return None;
    }
    let given = form_token.or_else(|| headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), shared.csrf.as_bytes()) => None,
        _ => refused("this action needs the page's CSRF token (reload the page and try again)\n"),
    }
}

fn with_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    // Not `no-referrer`: with it a browser sends `Origin: null` on the forms' POSTs, and the
    // origin check above could not tell them from another site's.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
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
        assert_eq!(cookie(&headers, TOKEN_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
