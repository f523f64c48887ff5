//! Actions on many tasks or dead letters at once: the rows' checkboxes post the chosen ids
//! with an action; the first post shows what would be done and asks to confirm (no script
//! needed, and nothing happens by a stray click); the confirmed post does it, one by one, and
//! shows how each went. Each is logged as a single action is (see `actions`).

use axum::Extension;
use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{Markup, html};

use qtasks_core::stats::DeadLetter;

use crate::Shared;
use crate::actions::{self, Ask};
use crate::pages::{Section, page, problem};
use crate::security::{Caller, refuse_cross_site};

/// At most this many ids in one bulk action (a page holds fewer).
const MOST: usize = 500;

/// What a bulk form posted: its action, the chosen ids, the CSRF token, whether confirmed.
struct Posted {
    action: String,
    ids: Vec<String>,
    csrf: String,
    confirmed: bool,
}

impl Posted {
    fn from_fields(fields: Vec<(String, String)>, id_field: &str) -> Posted {
        let mut posted = Posted {
            action: String::new(),
            ids: Vec::new(),
            csrf: String::new(),
            confirmed: false,
        };
        for (name, value) in fields {
            match name.as_str() {
                "action" => posted.action = value,
                "csrf" => posted.csrf = value,
                "confirm" => posted.confirmed = value == "yes",
                _ if name == id_field => posted.ids.push(value),
                _ => {}
            }
        }
        // A ticked row posted twice counts once (the first place kept).
        let mut seen = std::collections::HashSet::new();
        posted.ids.retain(|id| seen.insert(id.clone()));
        posted
    }
}

/// One kind of bulk action: where it is posted, the field of its ids, its verbs.
struct Kind {
    section: Section,
    path: &'static str,
    id_field: &'static str,
    back: &'static str,
    what: &'static str,
    /// (the posted action, the log's verb, the button's label)
    actions: &'static [(&'static str, &'static str, &'static str)],
}

const TASKS: Kind = Kind {
    section: Section::Tasks,
    path: "tasks/bulk",
    id_field: "uuid",
    back: "tasks",
    what: "task",
    actions: &[
        ("retry", "retry", "Retry"),
        ("cancel", "cancel", "Cancel"),
        ("delete", "delete", "Delete the records of"),
    ],
};

const DEAD_LETTERS: Kind = Kind {
    section: Section::Dead,
    path: "dead/bulk",
    id_field: "id",
    back: "dead",
    what: "dead letter",
    actions: &[("requeue", "requeue", "Requeue"), ("drop", "drop", "Drop")],
};

/// The bulk form's controls, for the page whose rows carry the checkboxes (`form="bulk"`).
pub(crate) fn controls(shared: &Shared, tasks: bool) -> Markup {
    let kind = if tasks { &TASKS } else { &DEAD_LETTERS };
    html! {
        form.bulk #bulk method="post" action=(kind.path) {
            input type="hidden" name="csrf" value=(shared.csrf);
            label { "With the selected " (kind.what) "s: "
                select name="action" {
                    @for (action, _, label) in kind.actions { option value=(action) { (label) } }
                }
            }
            " "
            button type="submit" { "Review…" }
        }
    }
}

/// A row's checkbox, part of the bulk form.
pub(crate) fn checkbox(name: &str, value: &str, label: &str) -> Markup {
    html! {
        input type="checkbox" form="bulk" name=(name) value=(value) aria-label=(label);
    }
}

pub(crate) async fn tasks_form(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    bulk(&shared, &TASKS, caller, &headers, fields).await
}

pub(crate) async fn dead_form(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    bulk(&shared, &DEAD_LETTERS, caller, &headers, fields).await
}

async fn bulk(
    shared: &Shared,
    kind: &Kind,
    caller: Caller,
    headers: &HeaderMap,
    fields: Vec<(String, String)>,
) -> Response {
    let posted = Posted::from_fields(fields, kind.id_field);
    if let Some(refused) = refuse_cross_site(shared, headers, Some(&posted.csrf)) {
        Ask::new(caller, "bulk", kind.path).log("refused: cross-site, or no CSRF token");
        return refused;
    }
    let Some(&(action, verb, label)) = kind.actions.iter().find(|(a, _, _)| *a == posted.action)
    else {
        return problem(
            shared,
            StatusCode::BAD_REQUEST,
            "No such action",
            &format!("`{}` is not an action here", posted.action),
        );
    };
    if posted.ids.is_empty() {
        return problem(
            shared,
            StatusCode::BAD_REQUEST,
            "Nothing selected",
            &format!("Tick the {}s to act on first.", kind.what),
        );
    }
    if posted.ids.len() > MOST {
        return problem(
            shared,
            StatusCode::BAD_REQUEST,
            "Too many",
            &format!("At most {MOST} at once."),
        );
    }
    if !posted.confirmed {
        return confirm(shared, kind, action, label, &posted);
    }
    // Dead letters are found by their short ids in one listing, not one per id.
    let letters = if kind.id_field == "id" {
        match shared
            .app
            .dead_letters()
            .list(crate::DEAD_LETTERS_MAX)
            .await
        {
            Ok(letters) => letters,
            Err(error) => {
                let detail = qtasks_core::backend::ErrorChain(&error).to_string();
                return problem(
                    shared,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The backend failed",
                    &detail,
                );
            }
        }
    } else {
        Vec::new()
    };
    let mut outcomes = Vec::with_capacity(posted.ids.len());
    for id in &posted.ids {
        let done = run(shared, action, id, &letters).await;
        let shown = match &done {
            Ok(said) => said.clone(),
            Err(refusal) => format!("not done: {}", refusal.detail),
        };
        Ask::new(caller, verb, id).log(&format!("(bulk) {shown}"));
        outcomes.push((id.clone(), done.is_ok(), shown));
    }
    let done = outcomes.iter().filter(|(_, ok, _)| *ok).count();
    let body = html! {
        h1 { (label) " " (outcomes.len()) " " (kind.what) "s" }
        p.notice role="status" { (done) " of " (outcomes.len()) " done." }
        div.scroll {
            table {
                thead { tr { th scope="col" { "Which" } th scope="col" { "Outcome" } } }
                tbody {
                    @for (id, ok, shown) in &outcomes {
                        tr {
                            td.mono { (link_to(kind, id)) }
                            td { @if *ok { (shown) } @else { span.problem { (shown) } } }
                        }
                    }
                }
            }
        }
        p { a href=(kind.back) { "Back" } }
    };
    page(shared, kind.section, "Done", None, body)
}

/// The confirmation: what would be done to which, with the same fields and `confirm=yes`.
fn confirm(shared: &Shared, kind: &Kind, action: &str, label: &str, posted: &Posted) -> Response {
    let body = html! {
        h1 { (label) " " (posted.ids.len()) " " (kind.what) "s?" }
        ul.mono {
            @for id in &posted.ids { li { (link_to(kind, id)) } }
        }
        form method="post" action=(kind.path) {
            input type="hidden" name="csrf" value=(shared.csrf);
            input type="hidden" name="action" value=(action);
            input type="hidden" name="confirm" value="yes";
            @for id in &posted.ids { input type="hidden" name=(kind.id_field) value=(id); }
            button.danger #confirm type="submit" { (label) " " (posted.ids.len()) }
            " "
            a href=(kind.back) { "Back, doing nothing" }
        }
    };
    page(shared, kind.section, "Confirm", None, body)
}

fn link_to(kind: &Kind, id: &str) -> Markup {
    if kind.id_field == "uuid" {
        html! { a href={ "tasks/" (id) } { (id) } }
    } else {
        html! { (id) }
    }
}

/// Does `action` to one task or letter; what it did, for the result page.
async fn run(
    shared: &Shared,
    action: &str,
    id: &str,
    letters: &[DeadLetter],
) -> Result<String, actions::Refusal> {
    Ok(match action {
        "retry" => format!("retried as {}", actions::retry(shared, id).await?),
        "cancel" => match actions::cancel(shared, id, None).await? {
            (_, true) => "cancelled (or asked to stop)".to_owned(),
            (_, false) => "had ended already".to_owned(),
        },
        "delete" => match actions::delete(shared, id).await? {
            true => "record deleted".to_owned(),
            false => "no record".to_owned(),
        },
        "requeue" | "drop" => {
            let Some(letter) = letters.iter().find(|letter| letter.short_id() == id) else {
                return Ok("not there any more".to_owned());
            };
            match actions::resolve_letter(shared, letter, action == "requeue").await? {
                true if action == "requeue" => "requeued".to_owned(),
                true => "dropped".to_owned(),
                false => "not there any more".to_owned(),
            }
        }
        other => {
            return Err(actions::Refusal {
                status: StatusCode::BAD_REQUEST,
                title: "No such action",
                detail: format!("`{other}` is not an action here"),
            });
        }
    })
}
