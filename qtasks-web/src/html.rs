//! Building HTML safely: [`Html`] escapes every piece of text it is given, and takes markup
//! only as `&'static str` (written in this crate, never data). Everything the dashboard shows
//! of a task (its name, arguments, result, traceback) reaches a page through [`Html::text`].

use std::fmt::Write as _;

/// A piece of HTML under construction.
#[derive(Debug, Default)]
pub(crate) struct Html(String);

impl Html {
    pub(crate) fn new() -> Self {
        Html(String::with_capacity(4096))
    }

    /// Markup written in this crate.
    pub(crate) fn raw(&mut self, markup: &'static str) -> &mut Self {
        self.0.push_str(markup);
        self
    }

    /// Text, escaped for element content and for quoted attribute values alike.
    pub(crate) fn text(&mut self, text: &str) -> &mut Self {
        for c in text.chars() {
            match c {
                '&' => self.0.push_str("&amp;"),
                '<' => self.0.push_str("&lt;"),
                '>' => self.0.push_str("&gt;"),
                '"' => self.0.push_str("&quot;"),
                '\'' => self.0.push_str("&#39;"),
                c => self.0.push(c),
            }
        }
        self
    }

    /// A number (nothing to escape).
    pub(crate) fn num(&mut self, number: impl std::fmt::Display) -> &mut Self {
        let _ = write!(self.0, "{number}");
        self
    }

    /// Another piece built the same way.
    pub(crate) fn html(&mut self, other: &Html) -> &mut Self {
        self.0.push_str(&other.0);
        self
    }

    /// `<a href="{href}">{label}</a>`, both escaped.
    pub(crate) fn link(&mut self, href: &str, label: &str) -> &mut Self {
        self.raw("<a href=\"")
            .text(href)
            .raw("\">")
            .text(label)
            .raw("</a>")
    }

    /// A Unix time as `<time>`, UTC, to the second.
    pub(crate) fn time(&mut self, unix_secs: f64) -> &mut Self {
        let shown = timestamp(unix_secs);
        self.raw("<time datetime=\"")
            .text(&shown)
            .raw("\">")
            .text(&shown.replace('T', " "))
            .raw("</time>")
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn into_string(self) -> String {
        self.0
    }
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
        let mut html = Html::new();
        html.raw("<p title=\"")
            .text("\"><script>alert(1)</script>")
            .raw("\">")
            .text("<b>&'")
            .raw("</p>");
        assert_eq!(
            html.into_string(),
            "<p title=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\">&lt;b&gt;&amp;&#39;</p>"
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
