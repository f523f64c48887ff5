//! "Did you mean ...?" for trigger names that are not in the catalogue.

use crate::{Component, Trigger};

/// What to tell a user who wrote a trigger name that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suggestion {
    /// One trigger is close enough to be the intended one.
    DidYouMean(Trigger),
    /// Nothing is close, but the name starts with a component's prefix: list that component's
    /// triggers rather than all 56.
    SameComponent(Component),
    /// Nothing useful to suggest.
    None,
}

/// Suggests the trigger a user probably meant by `unknown`.
///
/// A trigger is close when its edit distance to `unknown` is at most a quarter of the name's
/// length (and at least 2), which catches typos and a dropped or extra word part.
///
/// ```
/// use qtasks_triggers::{suggest, Component, Suggestion, Trigger};
///
/// assert_eq!(suggest("worker_strat"), Suggestion::DidYouMean(Trigger::WorkerStart));
/// assert_eq!(suggest("storage_everything"), Suggestion::SameComponent(Component::Storage));
/// assert_eq!(suggest("zzz"), Suggestion::None);
/// ```
pub fn suggest(unknown: &str) -> Suggestion {
    let threshold = (unknown.len() / 4).max(2);
    let best = Trigger::ALL
        .iter()
        .map(|t| (edit_distance(unknown, t.name()), *t))
        .min_by_key(|(distance, _)| *distance);
    if let Some((distance, trigger)) = best
        && distance <= threshold
    {
        return Suggestion::DidYouMean(trigger);
    }
    // The longest matching prefix wins, so `task_executor_x` is not taken for a `task_` prefix.
    Component::ALL
        .iter()
        .filter(|c| unknown.starts_with(c.prefix()))
        .max_by_key(|c| c.prefix().len())
        .map_or(Suggestion::None, |c| Suggestion::SameComponent(*c))
}

/// The Levenshtein distance between two names, in characters: how many single-character
/// insertions, deletions and substitutions turn one into the other. The one measure of "close"
/// for every "did you mean" of qtasks (trigger names here, option names in the macros).
///
/// ```
/// assert_eq!(qtasks_triggers::edit_distance("kitten", "sitting"), 3);
/// ```
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn typos_are_caught() {
        assert_eq!(
            suggest("task_executor_run_task_trigger_eror"),
            Suggestion::DidYouMean(Trigger::TaskExecutorRunTaskTriggerError)
        );
        assert_eq!(
            suggest("qtasks_gte"),
            Suggestion::DidYouMean(Trigger::QtasksGet)
        );
    }

    #[test]
    fn a_far_name_with_a_known_prefix_lists_the_component() {
        assert_eq!(
            suggest("task_executor_on_failure"),
            Suggestion::SameComponent(Component::TaskExecutor)
        );
    }
}
