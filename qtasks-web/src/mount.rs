//! Where the dashboard is mounted: at `/` when it serves itself, or under a prefix of yours
//! (`Router::nest("/admin", web.router())`). Pages link relatively, against a `<base href>` of
//! the mount point, so the same HTML works under any prefix; redirects (which leave the page)
//! are built from the mount point of the request being answered.
//!
//! The mount point is worked out once per request, by [`remember`] (a layer of the dashboard's
//! own router, so it sees the path with the prefix stripped and axum's `OriginalUri` with it),
//! and is read while that request is answered through a task-local: the page helpers need not
//! carry it through every handler.

use axum::extract::{OriginalUri, Request};
use axum::middleware::Next;
use axum::response::Response;

tokio::task_local! {
    static MOUNT: Mount;
}

/// The request being answered: its mount point, and its whole path and query (with the
/// prefix).
#[derive(Clone, Default)]
struct Mount {
    prefix: String,
    path_and_query: String,
}

/// The prefix the request came through (`""` at the root, `/admin` under
/// `Router::nest("/admin", ..)`), and its whole path and query.
fn mount_of(request: &Request) -> Mount {
    let inner = request.uri().path();
    let Some(OriginalUri(original)) = request.extensions().get::<OriginalUri>() else {
        return Mount {
            prefix: String::new(),
            path_and_query: request.uri().to_string(),
        };
    };
    let path = original.path();
    let prefix = if inner == "/" {
        path
    } else {
        path.strip_suffix(inner).unwrap_or("")
    };
    let mut prefix = prefix.trim_end_matches('/').to_owned();
    // The prefix ends up in links and redirects: one that a browser could read as another
    // host's (`//evil`, `/\evil`) is not used (defence in depth: routers give none such).
    if prefix.starts_with("//") || prefix.contains('\\') {
        prefix.clear();
    }
    Mount {
        prefix,
        path_and_query: original
            .path_and_query()
            .map_or_else(|| path.to_owned(), ToString::to_string),
    }
}

/// Notes the request's mount point for everything that answers it.
pub(crate) async fn remember(request: Request, next: Next) -> Response {
    let mount = mount_of(&request);
    MOUNT.scope(mount, next.run(request)).await
}

/// The mount point of the request being answered (`""` at the root).
pub(crate) fn prefix() -> String {
    MOUNT
        .try_with(|mount| mount.prefix.clone())
        .unwrap_or_default()
}

/// The dashboard's own front page: `/admin` under `Router::nest("/admin", ..)` (axum serves a
/// nested root there, not at `/admin/`), `/` at the root.
pub(crate) fn home() -> String {
    let prefix = prefix();
    if prefix.is_empty() {
        "/".to_owned()
    } else {
        prefix
    }
}

/// A link to `fragment` on the page being answered (its query too): with a `<base href>`, a
/// bare `#main` would lead to the mount point's page instead.
pub(crate) fn on_this_page(fragment: &str) -> String {
    let here = MOUNT
        .try_with(|mount| mount.path_and_query.clone())
        .unwrap_or_default();
    format!("{here}#{fragment}")
}

/// `path` (relative: `tasks/42`) under the mount point: `/admin/tasks/42`, for a redirect.
pub(crate) fn path(path: &str) -> String {
    format!("{}/{}", prefix(), path.trim_start_matches('/'))
}

/// What the pages' `<base href>` says: the mount point with a trailing `/`.
pub(crate) fn base_href() -> String {
    format!("{}/", prefix())
}
