//! Unique tasks: at most one call per key at a time.
//!
//! An add with a [`UniqueKey`] ([`AddOptions::unique`](crate::AddOptions::unique), or a task's
//! `#[task(unique_for = "10m")]`, whose key is the task's name and arguments) adds nothing while
//! the task that took the key still waits or runs (a retry of it included), or was added less
//! than the key's window ago: it returns that task's handle instead. The engine decides in one
//! atomic step, so adds racing from several processes make one task.
//!
//! A call whose id is its own (`.uuid(id)`: the id decides already), a member of a group or
//! chord, a chord's callback and a retry by hand are not made unique.

use std::time::Duration;

use serde_json::{Map, Value};

/// The longest unique key, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// A key at most one waiting or running task holds, and the window after its add during which
/// the key stays taken even once it ended.
///
/// ```
/// use std::time::Duration;
/// use qtasks::unique::UniqueKey;
///
/// let key = UniqueKey::new("report:2026-12", Duration::from_secs(600));
/// assert_eq!(key.key, "report:2026-12");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UniqueKey {
    /// The key.
    pub key: String,
    /// How long after the add the key stays taken, even once its task ended (`0`: only while
    /// it waits or runs).
    pub window: Duration,
}

impl UniqueKey {
    /// The key `key`, held for `window` after each add (and while its task waits or runs).
    pub fn new(key: impl Into<String>, window: Duration) -> Self {
        UniqueKey {
            key: key.into(),
            window,
        }
    }

    /// The key of a task's call by its arguments (`unique_for`): its name and a digest of its
    /// arguments, the same in every process whatever the order of the keyword arguments.
    ///
    /// ```
    /// use std::time::Duration;
    /// use qtasks::unique::UniqueKey;
    ///
    /// let kwargs = |pairs: &[(&str, i64)]| {
    ///     pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).into())).collect()
    /// };
    /// let a = UniqueKey::of_call("sync", &[1.into()], &kwargs(&[("a", 1), ("b", 2)]), Duration::ZERO);
    /// let b = UniqueKey::of_call("sync", &[1.into()], &kwargs(&[("b", 2), ("a", 1)]), Duration::ZERO);
    /// assert_eq!(a, b);
    /// assert!(a.key.starts_with("sync:"));
    /// ```
    pub fn of_call(
        task_name: &str,
        args: &[Value],
        kwargs: &Map<String, Value>,
        window: Duration,
    ) -> Self {
        let mut canonical = String::new();
        write_canonical(&Value::Array(args.to_vec()), &mut canonical);
        canonical.push('|');
        write_canonical(&Value::Object(kwargs.clone()), &mut canonical);
        let digest = sha1_smol::Sha1::from(canonical.as_bytes())
            .digest()
            .to_string();
        UniqueKey::new(format!("{task_name}:{digest}"), window)
    }

    /// Checks the key: not empty, at most [`MAX_KEY_LEN`] bytes.
    pub fn check(&self) -> Result<(), String> {
        if self.key.is_empty() {
            return Err("a unique key cannot be empty".to_owned());
        }
        if self.key.len() > MAX_KEY_LEN {
            return Err(format!(
                "a unique key is at most {MAX_KEY_LEN} bytes; this one has {}",
                self.key.len()
            ));
        }
        Ok(())
    }

    /// The window in whole milliseconds (capped at a century), as the engines keep it.
    pub fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis().min(3_155_760_000_000)).unwrap_or(u64::MAX)
    }
}

/// JSON with every object's keys sorted, so equal arguments give one text.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Whether a task still holds its key at `now`: while its last attempt (a retry followed to
/// its next attempt; `status` is that attempt's, `None` when no record is left to read) waits
/// or runs, and within the window of its add (Unix seconds), whatever its records say.
pub fn still_holds(
    status: Option<crate::TaskStatus>,
    added_at: f64,
    window: Duration,
    now: f64,
) -> bool {
    use crate::TaskStatus;
    matches!(status, Some(TaskStatus::New | TaskStatus::Process))
        || now < added_at + window.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_of_calls_differ_by_arguments_and_name() {
        let none = Map::new();
        let one = UniqueKey::of_call("a", &[json!(1)], &none, Duration::ZERO);
        let two = UniqueKey::of_call("a", &[json!(2)], &none, Duration::ZERO);
        let other = UniqueKey::of_call("b", &[json!(1)], &none, Duration::ZERO);
        assert_ne!(one.key, two.key);
        assert_ne!(one.key, other.key);
        let nested_a = UniqueKey::of_call(
            "a",
            &[json!({"x": 1, "y": [1, {"q": 1, "p": 2}]})],
            &none,
            Duration::ZERO,
        );
        let nested_b = UniqueKey::of_call(
            "a",
            &[json!({"y": [1, {"p": 2, "q": 1}], "x": 1})],
            &none,
            Duration::ZERO,
        );
        assert_eq!(nested_a.key, nested_b.key);
    }

    #[test]
    fn a_key_holds_while_its_task_lives_and_within_its_window() {
        use crate::TaskStatus;
        let window = Duration::from_secs(10);
        assert!(still_holds(Some(TaskStatus::Process), 0.0, window, 1e9));
        assert!(still_holds(Some(TaskStatus::New), 0.0, window, 1e9));
        assert!(still_holds(Some(TaskStatus::Success), 100.0, window, 105.0));
        assert!(!still_holds(
            Some(TaskStatus::Success),
            100.0,
            window,
            111.0
        ));
        let no_window = Duration::ZERO;
        assert!(!still_holds(
            Some(TaskStatus::Cancel),
            100.0,
            no_window,
            100.0
        ));
        // A retry whose next attempt cannot be followed has ended; a record gone still holds
        // its window.
        assert!(!still_holds(Some(TaskStatus::Retry), 0.0, window, 1e9));
        assert!(still_holds(None, 100.0, window, 105.0));
        assert!(!still_holds(None, 100.0, window, 111.0));
        assert!(UniqueKey::new("", window).check().is_err());
        assert!(UniqueKey::new("k".repeat(513), window).check().is_err());
    }
}
