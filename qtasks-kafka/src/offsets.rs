//! The messages this worker has read and not finished with, per assigned partition: what the
//! takes hand out, and how far each partition's offset may be committed.
//!
//! Kafka keeps one offset per partition for the group, not an ack per message, while a worker
//! runs many tasks of a partition at once and they end in any order. So a partition's offset
//! is committed only up to its first message that is not done (its outcome not stored yet, or
//! not taken yet): a worker that dies leaves every unfinished task to the partition's next
//! owner, which reads on from there. Messages done past that point are read again by the next
//! owner and dropped, their records having ended.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A message as the consumer read it, tagged with the assignment it came in.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// The assignment of the partition the message was read in: once the partition is
    /// revoked, what this worker still holds of it is no longer its to finish or commit.
    pub(crate) generation: u64,
    /// Whether a worker of the group may have taken this message before (it lies below the
    /// partition's read mark): a record it finds `process` then belongs to a worker that died.
    pub(crate) seen_before: bool,
    pub(crate) value: Vec<u8>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
}

/// One assigned partition's messages.
#[derive(Debug)]
struct Track {
    generation: u64,
    /// Read and not done (waiting, delayed or running).
    outstanding: BTreeSet<i64>,
    /// Taken and not done.
    running: BTreeSet<i64>,
    /// The offset after the highest one read, once one was.
    read_to: Option<i64>,
    /// The offset last committed by this worker.
    committed: Option<i64>,
}

impl Track {
    /// Where the partition's offset may be committed: its first message not done, else past
    /// the last one read.
    fn commit_point(&self) -> Option<i64> {
        self.outstanding.first().copied().or(self.read_to)
    }
}

#[derive(Debug, Default)]
struct State {
    partitions: HashMap<i32, Track>,
    /// Read and due, in the order read.
    ready: VecDeque<Received>,
    /// Read and not due yet, by due time (Unix milliseconds), then by order read.
    delayed: BTreeMap<(u64, u64), Received>,
    next_seq: u64,
    next_generation: u64,
}

impl State {
    fn current_mut(&mut self, partition: i32, generation: u64) -> Option<&mut Track> {
        self.partitions
            .get_mut(&partition)
            .filter(|track| track.generation == generation)
    }

    /// Moves the delayed messages due by `now_ms` to the ready ones.
    fn promote_due(&mut self, now_ms: u64) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            self.ready.push_back(entry.remove());
        }
    }
}

/// What the consumer thread and the takes share.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    state: Mutex<State>,
    /// Signalled when a message is done: a revoke waits on it for the runs of its partitions.
    done: Condvar,
    /// Notified when a message arrives: an idle take waits on it.
    pub(crate) arrived: tokio::sync::Notify,
}

impl Tracker {
    /// The partitions were assigned to this worker: their messages are tracked from now.
    /// Returns the generation their messages are tagged with.
    pub(crate) fn assign(&self, partitions: &[i32]) -> u64 {
        let mut state = self.state.lock();
        state.next_generation += 1;
        let generation = state.next_generation;
        for &partition in partitions {
            state.partitions.insert(
                partition,
                Track {
                    generation,
                    outstanding: BTreeSet::new(),
                    running: BTreeSet::new(),
                    read_to: None,
                    committed: None,
                },
            );
        }
        generation
    }

    /// The generation of an assigned partition's messages, `None` if it is not assigned.
    pub(crate) fn generation_of(&self, partition: i32) -> Option<u64> {
        self.state
            .lock()
            .partitions
            .get(&partition)
            .map(|track| track.generation)
    }

    /// The partitions are taken from this worker: waits up to `patience` for their running
    /// tasks to end (so the next owner does not run them again), then forgets them, and
    /// returns how far each may be committed. What was read and not taken is left to the next
    /// owner.
    pub(crate) fn revoke(&self, partitions: &[i32], patience: Duration) -> Vec<(i32, i64)> {
        let deadline = Instant::now() + patience;
        let mut state = self.state.lock();
        loop {
            let running: usize = partitions
                .iter()
                .filter_map(|partition| state.partitions.get(partition))
                .map(|track| track.running.len())
                .sum();
            if running == 0 {
                break;
            }
            if self.done.wait_until(&mut state, deadline).timed_out() {
                tracing::warn!(
                    running,
                    "the rebalance took partitions while {running} of their tasks still ran; their next owner may run them again"
                );
                break;
            }
        }
        let mut points = Vec::new();
        for partition in partitions {
            // Committed again even where nothing moved: an asynchronous commit may have
            // failed.
            if let Some(track) = state.partitions.remove(partition)
                && let Some(point) = track.commit_point()
            {
                points.push((*partition, point));
            }
        }
        let gone = |received: &Received| partitions.contains(&received.partition);
        state.ready.retain(|received| !gone(received));
        state.delayed.retain(|_, received| !gone(received));
        points
    }

    /// A message the consumer read, due now or at `due_ms`.
    pub(crate) fn read(&self, received: Received) {
        let mut state = self.state.lock();
        let Some(track) = state.current_mut(received.partition, received.generation) else {
            tracing::trace!(
                partition = received.partition,
                offset = received.offset,
                "a message of an assignment revoked since"
            );
            return;
        };
        if !track.outstanding.insert(received.offset) {
            // Read twice in one assignment (never expected): one copy is enough, and a second
            // one's end must not count the first one's run as done.
            return;
        }
        track.read_to = Some(
            track
                .read_to
                .map_or(received.offset + 1, |to| to.max(received.offset + 1)),
        );
        state.ready.push_back(received);
        drop(state);
        self.arrived.notify_waiters();
    }

    /// Up to `max` messages to take (due ones; none that belongs to a partition revoked
    /// since), each marked running.
    pub(crate) fn take(&self, max: usize, now_ms: u64) -> Vec<Received> {
        let mut state = self.state.lock();
        state.promote_due(now_ms);
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some(received) = state.ready.pop_front() else {
                break;
            };
            if let Some(track) = state.current_mut(received.partition, received.generation) {
                track.running.insert(received.offset);
                taken.push(received);
            }
        }
        taken
    }

    /// When the next delayed message is due (Unix milliseconds).
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.state
            .lock()
            .delayed
            .first_key_value()
            .map(|(key, _)| key.0)
    }

    /// A taken message that may not run before `due_ms`: it waits here, not running.
    pub(crate) fn delay(&self, received: Received, due_ms: u64) {
        let mut state = self.state.lock();
        let Some(track) = state.current_mut(received.partition, received.generation) else {
            return;
        };
        track.running.remove(&received.offset);
        state.next_seq += 1;
        let seq = state.next_seq;
        state.delayed.insert((due_ms, seq), received);
        drop(state);
        self.done.notify_all();
    }

    /// A taken message goes back to be taken again first (a take dropped half way).
    pub(crate) fn put_back(&self, received: Received) {
        let mut state = self.state.lock();
        let Some(track) = state.current_mut(received.partition, received.generation) else {
            return;
        };
        track.running.remove(&received.offset);
        state.ready.push_front(received);
        drop(state);
        self.done.notify_all();
        self.arrived.notify_waiters();
    }

    /// The message is done with: its outcome stored, or it needs no run. A message of a
    /// partition revoked since changes nothing.
    pub(crate) fn done(&self, partition: i32, offset: i64, generation: u64) {
        let mut state = self.state.lock();
        if let Some(track) = state.current_mut(partition, generation) {
            track.outstanding.remove(&offset);
            track.running.remove(&offset);
        }
        drop(state);
        self.done.notify_all();
    }

    /// Whether the message read in `generation` of `partition` belongs to its assignment now.
    pub(crate) fn is_current(&self, partition: i32, generation: u64) -> bool {
        self.state
            .lock()
            .partitions
            .get(&partition)
            .is_some_and(|track| track.generation == generation)
    }

    /// Every assigned partition's commit point (a stop commits them all, whatever was sent
    /// before: an asynchronous commit may have failed).
    pub(crate) fn all_points(&self) -> Vec<(i32, i64)> {
        let state = self.state.lock();
        state
            .partitions
            .iter()
            .filter_map(|(partition, track)| Some((*partition, track.commit_point()?)))
            .collect()
    }

    /// The partitions whose commit point moved since their last commit, with the point
    /// (counted as committed from now).
    pub(crate) fn commits_due(&self) -> Vec<(i32, i64)> {
        let mut state = self.state.lock();
        let mut points = Vec::new();
        for (partition, track) in &mut state.partitions {
            if let Some(point) = track.commit_point()
                && track.committed.is_none_or(|committed| point > committed)
            {
                track.committed = Some(point);
                points.push((*partition, point));
            }
        }
        points
    }

    /// How many messages are read and not taken (waiting or delayed): the consumer pauses
    /// its partitions while there are many.
    pub(crate) fn buffered(&self) -> usize {
        let state = self.state.lock();
        state.ready.len() + state.delayed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(partition: i32, offset: i64, generation: u64) -> Received {
        Received {
            partition,
            offset,
            generation,
            seen_before: false,
            value: Vec::new(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn the_commit_stops_at_the_first_message_not_done() {
        let tracker = Tracker::default();
        let generation = tracker.assign(&[0]);
        for offset in 10..14 {
            tracker.read(message(0, offset, generation));
        }
        let taken = tracker.take(4, 0);
        assert_eq!(taken.len(), 4);
        tracker.done(0, 11, generation);
        tracker.done(0, 13, generation);
        assert_eq!(tracker.commits_due(), vec![(0, 10)]);
        tracker.done(0, 10, generation);
        assert_eq!(tracker.commits_due(), vec![(0, 12)]);
        assert_eq!(tracker.commits_due(), vec![], "nothing moved");
        tracker.done(0, 12, generation);
        assert_eq!(tracker.commits_due(), vec![(0, 14)], "past the last read");
    }

    #[test]
    fn a_revoked_partitions_messages_are_left_to_its_next_owner() {
        let tracker = Tracker::default();
        let first = tracker.assign(&[0, 1]);
        tracker.read(message(0, 5, first));
        tracker.read(message(1, 7, first));
        tracker.read(message(1, 8, first));
        let taken = tracker.take(1, 0);
        assert_eq!(taken[0].offset, 5);
        tracker.done(0, 5, first);
        let points = tracker.revoke(&[1], Duration::from_millis(10));
        assert_eq!(points, vec![(1, 7)], "nothing of partition 1 was done");
        assert!(
            tracker.take(10, 0).is_empty(),
            "its waiting messages went with it"
        );
        // A later finish of a message of the old assignment changes nothing.
        let second = tracker.assign(&[1]);
        tracker.done(1, 7, first);
        tracker.read(message(1, 7, second));
        let mut points = tracker.commits_due();
        points.sort_unstable();
        assert_eq!(points, vec![(0, 6), (1, 7)]);
    }

    #[test]
    fn a_revoke_waits_for_the_running_tasks_of_its_partitions() {
        let tracker = std::sync::Arc::new(Tracker::default());
        let generation = tracker.assign(&[0]);
        tracker.read(message(0, 1, generation));
        assert_eq!(tracker.take(1, 0).len(), 1);
        let finisher = {
            let tracker = std::sync::Arc::clone(&tracker);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                tracker.done(0, 1, generation);
            })
        };
        let points = tracker.revoke(&[0], Duration::from_secs(10));
        assert_eq!(
            points,
            vec![(0, 2)],
            "the run ended before the revoke returned"
        );
        finisher.join().unwrap();
    }

    #[test]
    fn delayed_messages_wait_their_time_and_hold_the_commit() {
        let tracker = Tracker::default();
        let generation = tracker.assign(&[0]);
        tracker.read(message(0, 1, generation));
        tracker.read(message(0, 2, generation));
        let taken = tracker.take(1, 0);
        tracker.delay(taken[0].clone(), 1_000);
        assert_eq!(tracker.next_due(), Some(1_000));
        let now = tracker.take(5, 999);
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].offset, 2);
        tracker.done(0, 2, generation);
        assert_eq!(
            tracker.commits_due(),
            vec![(0, 1)],
            "the delayed message holds it"
        );
        let due = tracker.take(5, 1_000);
        assert_eq!(due[0].offset, 1);
        tracker.done(0, 1, generation);
        assert_eq!(tracker.commits_due(), vec![(0, 3)]);
    }
}
