//! How results are shown: aligned tables and plain lines for people, JSON for scripts, and a
//! spinner on a terminal while waiting.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("error: the output does not encode as JSON: {error}"),
    }
}

/// Prints rows under a header, each column as wide as its widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |out: &mut std::io::StdoutLock<'_>, cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            text.extend(std::iter::repeat_n(' ', pad));
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&mut out, &mut header.iter().copied());
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
}

/// `label  value` lines, the labels aligned.
pub(crate) fn fields(pairs: &[(&str, String)]) {
    let width = pairs.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    for (label, value) in pairs {
        println!("{label:<width$}  {value}");
    }
}

/// A duration for people: `850ms`, `12.5s`, `4m 3s`, `2h 5m`, `3d 4h`.
pub(crate) fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 1.0 {
        format!("{}ms", duration.as_millis())
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        format!("{}m {}s", (secs / 60.0) as u64, secs as u64 % 60)
    } else if secs < 86400.0 {
        format!("{}h {}m", (secs / 3600.0) as u64, (secs as u64 % 3600) / 60)
    } else {
        format!(
            "{}d {}h",
            (secs / 86400.0) as u64,
            (secs as u64 % 86400) / 3600
        )
    }
}

/// How long ago a Unix time was, for people.
pub(crate) fn ago(unix: f64) -> String {
    let age = (qtasks_core::backend::unix_now() - unix).max(0.0);
    format!("{} ago", human_duration(seconds(age)))
}

/// A number of seconds read from a record or the backend as a duration: none for what is not
/// a number, the longest one for what no duration holds (never a panic on a bad value).
pub(crate) fn seconds(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    }
}

/// A spinner with the elapsed time on stderr while `what` runs, when stderr is a terminal;
/// nothing at all when it is not (piped output stays clean).
pub(crate) struct Spinner(Option<ProgressBar>);

impl Spinner {
    pub(crate) fn start(what: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        Spinner(Some(bar))
    }

    /// Prints a line on stderr above the spinner (without garbling its line).
    pub(crate) fn println(&self, line: &str) {
        match &self.0 {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

/// A duration written as `90s`, `15m`, `2h`, `1d` (or plain seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((text, ""), |at| text.split_at(at));
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write e.g. 90s, 15m, 2h or 1d"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(format!(
                "`{other}` is not a unit of `{text}`; use s, m, h or d"
            ));
        }
    };
    Duration::try_from_secs_f64(number * scale).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_print_for_people() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(
            parse_duration("2w")
                .unwrap_err()
                .contains("use s, m, h or d")
        );
        assert!(parse_duration("soon").is_err());
        assert_eq!(human_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(human_duration(Duration::from_secs(243)), "4m 3s");
        assert_eq!(human_duration(Duration::from_secs(7500)), "2h 5m");
    }
}
