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

/// Suggests the trigger a user probably meant by `unknown`: the [`closest`] trigger name, or,
/// when none is close, the component whose prefix the name starts with.
///
/// ```
/// use qtasks_triggers::{suggest, Component, Suggestion, Trigger};
///
/// assert_eq!(suggest("worker_strat"), Suggestion::DidYouMean(Trigger::WorkerStart));
/// assert_eq!(suggest("storage_everything"), Suggestion::SameComponent(Component::Storage));
/// assert_eq!(suggest("zzz"), Suggestion::None);
/// ```
pub fn suggest(unknown: &str) -> Suggestion {
    if let Some(close) = closest(unknown, Trigger::ALL.iter().map(|t| t.name()))
        && let Some(trigger) = Trigger::from_name(close)
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

/// The candidate a user probably meant by `unknown`, for every "did you mean" of qtasks
/// (trigger names, the macros' option names, task names): the one at the smallest edit
/// distance (`strsim`'s optimal string alignment: an insertion, a deletion, a substitution or
/// two neighbours swapped each count one), if that distance is at most a quarter of
/// `unknown`'s length (at least one edit). The first candidate wins a tie.
///
/// ```
/// let options = ["echo", "retry", "priority", "timeout"];
/// assert_eq!(qtasks_triggers::closest("priorty", options), Some("priority"));
/// assert_eq!(qtasks_triggers::closest("colour", options), None);
/// ```
pub fn closest<'a>(
    unknown: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (unknown.chars().count() / 4).max(1);
    candidates
        .into_iter()
        .map(|candidate| (strsim::osa_distance(unknown, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_takes_the_nearest_within_a_third() {
        assert_eq!(closest("tiemout", ["timeout", "retry"]), Some("timeout"));
        assert_eq!(closest("abc", ["abd", "abe"]), Some("abd"));
        assert_eq!(closest("ab", ["xy"]), None);
        assert_eq!(closest("anything", []), None);
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
