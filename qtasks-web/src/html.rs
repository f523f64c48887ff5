//! Helpers of the pages' markup. The pages are written with `maud`'s `html!`, checked at
//! compile time: every value spliced in is escaped unless wrapped in `PreEscaped` (which only
//! this crate's constant markup is), so everything the dashboard shows of a task (its name,
//! arguments, result, traceback) reaches a page as text.

use maud::{Markup, html};

/// A Unix time as `<time>`, UTC, to the second.
pub(crate) fn time(unix_secs: f64) -> Markup {
    let shown = timestamp(unix_secs);
    html! { time datetime=(shown) { (shown.replace('T', " ")) } }
}

/// `<a href="{href}">{label}</a>`.
pub(crate) fn link(href: &str, label: &str) -> Markup {
    html! { a href=(href) { (label) } }
}

/// A Unix time as RFC 3339, UTC, to the second (`-` when it is not a time).
pub(crate) fn timestamp(unix_secs: f64) -> String {
    if !unix_secs.is_finite() || unix_secs <= 0.0 {
        return "-".to_owned();
    }
    jiff::Timestamp::from_second(unix_secs as i64)
        .map_or_else(|_| "-".to_owned(), |time| time.to_string())
}

/// A duration in seconds, short: `42 s`, `7 min`, `3 h`, `2 d`.
pub(crate) fn age(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else if secs < 120.0 {
        format!("{secs:.0} s")
    } else if secs < 7200.0 {
        format!("{:.0} min", secs / 60.0)
    } else if secs < 172_800.0 {
        format!("{:.0} h", secs / 3600.0)
    } else {
        format!("{:.0} d", secs / 86_400.0)
    }
}

/// What a query value keeps as it is: RFC 3986's unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Query-string encoding of one value (RFC 3986 unreserved characters kept).
pub(crate) fn query_value(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, QUERY_VALUE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_everywhere() {
        let markup = html! { p title=("\"><script>alert(1)</script>") { ("<b>&") } };
        assert_eq!(
            markup.into_string(),
            "<p title=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\">&lt;b&gt;&amp;</p>"
        );
    }

    #[test]
    fn times_and_ages_read_plainly() {
        assert_eq!(timestamp(1_764_547_200.4), "2025-12-01T00:00:00Z");
        assert_eq!(timestamp(f64::NAN), "-");
        assert_eq!(age(0.25), "250 ms");
        assert_eq!(age(59.0), "59 s");
        assert_eq!(age(600.0), "10 min");
        assert_eq!(query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
