//! The scheduler every worker runs: sleeps until the next slot of any schedule, claims each due
//! slot on the backend (one atomic command: the first claimer fires it, the others skip it),
//! adds the task, and records the firing for `stats`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Missed, Schedule, ScheduleInfo, unix_ms};
use crate::{QueueTasks, TaskCall};

/// The global-config entries (name → JSON [`ScheduleInfo`]) where workers record schedules.
pub(crate) const STATES: &str = "qtasks_schedules";
/// The global-config entries (name → `1`) of paused schedules.
pub(crate) const PAUSED: &str = "qtasks_schedules_paused";

/// How late a slot may be noticed and still count as on time (a wake-up a little late, a busy
/// runtime); later than this (plus the jitter) it was missed.
const ON_TIME: i64 = 1_000;

/// At most this many missed slots are looked at on a wake-up (a worker back after a long time).
const LOOK_BACK: usize = 100_000;

/// How long after a slot a worker that lost its claim checks that the winner added the task
/// (a winner that died between its claim and its add would otherwise lose the slot).
const CHECK_AFTER: i64 = 10_000;

/// How long after a slot (and its jitter) a worker whose claim failed checks it, in ms.
const CLAIM_FAILED_CHECK: i64 = 2_000;

/// The id of a slot's task: the same in every worker, so a worker that checks a slot knows
/// which record to look for (FNV-1a, 128 bits, over app, schedule and slot; a version-8 uuid).
pub(crate) fn slot_uuid(app: &str, schedule: &str, slot_ms: i64) -> uuid::Uuid {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut hash = OFFSET;
    for byte in format!("qtasks-slot\0{app}\0{schedule}\0{slot_ms}").bytes() {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    let versioned = (hash & !(0xF << 76)) | (0x8 << 76);
    let variant = (versioned & !(0b11 << 62)) | (0b10 << 62);
    uuid::Uuid::from_u128(variant)
}

/// How long a worker waits before adding a slot's task again after an add failed (a storage
/// or broker outage, a reply lost): doubled each time, up to [`ADD_AGAIN_MAX`].
const ADD_AGAIN_FIRST: i64 = 500;
const ADD_AGAIN_MAX: i64 = 30_000;

/// Something to do about one slot at `at_ms`.
struct Check {
    entry: usize,
    slot_ms: i64,
    at_ms: i64,
    kind: CheckKind,
}

enum CheckKind {
    /// Check that the slot's task was added, and add it if its claimer did not (see
    /// [`recover_slot`]). `claimed`: the slot is known to be claimed (this worker lost the
    /// claim); else (a slot before this worker started) a slot nobody claimed is left alone.
    Recover { claimed: bool },
    /// This worker owns the slot (its claim, or the added mark a check took) and adds the
    /// task now: after the jitter, or again after `failures` failed adds. A `recovery` add
    /// is of an older slot, so it does not record the firing (the schedule's last slot).
    Add { failures: u32, recovery: bool },
}

/// The claim of a slot: taken by the worker that fires it.
fn slot_key(entry: &Entry, slot_ms: i64) -> String {
    format!("schedule:{}:{slot_ms}", entry.name)
}

/// The mark that a slot's task was added: taken by its claimer once the add succeeded, or by
/// the one check that adds it instead (the claimer died or failed first). Whether a slot was
/// handled is read from these two marks, never from the task's record, which may have been
/// deleted or have expired since.
fn added_key(entry: &Entry, slot_ms: i64) -> String {
    format!("schedule:{}:{slot_ms}:added", entry.name)
}

impl Check {
    /// The next add of a slot whose add failed `failures` times, or `None` once the slot's
    /// claim has lapsed (no worker would know it any more: given up, loudly).
    fn add_again(
        entry: &Entry,
        index: usize,
        slot_ms: i64,
        failures: u32,
        recovery: bool,
        now: i64,
    ) -> Option<Check> {
        let pause = ADD_AGAIN_FIRST
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(ADD_AGAIN_MAX);
        let lapses = slot_ms.saturating_add(entry.claim_ttl(slot_ms).as_millis() as i64);
        (now + pause < lapses).then_some(Check {
            entry: index,
            slot_ms,
            at_ms: now + pause,
            kind: CheckKind::Add { failures, recovery },
        })
    }
}

/// One registered schedule.
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) schedule: Schedule,
    pub(crate) call: TaskCall,
}

impl Entry {
    pub(crate) fn info(&self, next_ms: Option<i64>) -> ScheduleInfo {
        // The task's own priority and queue, recorded so that a process without its code adds
        // the call where this one would.
        let table = crate::registry::TaskTable::global().ok();
        let definition = table.and_then(|table| table.get(&self.call.task_name));
        ScheduleInfo {
            name: self.name.clone(),
            task: self.call.task_name.clone(),
            when: self.schedule.to_string(),
            next_at: next_ms.map(|ms| ms as f64 / 1000.0),
            last_slot: None,
            last_fired_at: None,
            last_uuid: None,
            paused: false,
            args: Some(self.call.args.clone()),
            kwargs: self.call.kwargs.clone(),
            priority: self
                .call
                .priority
                .or(definition.and_then(|d| d.parts.priority)),
            queue: self
                .call
                .queue
                .clone()
                .or_else(|| definition.and_then(|d| d.parts.queue.map(str::to_owned))),
        }
    }

    /// How long a slot's claim is kept: long enough that no worker still tries the slot (the
    /// on-time window, or a catch-up after a restart), short enough that a one-second schedule
    /// keeps about a minute of claims.
    fn claim_ttl(&self, now_ms: i64) -> Duration {
        let period = self.schedule.typical_period_ms(now_ms).max(1);
        let catch_up = match self.schedule.missed {
            Missed::CatchUp(n) => i64::from(n),
            Missed::Skip => 0,
        };
        let ttl = period
            .saturating_mul(2 * (catch_up + 1))
            .clamp(60_000, 7 * 86_400_000);
        Duration::from_millis(ttl as u64)
    }
}

/// Reads the recorded schedules and the paused ones.
pub(crate) async fn read_infos(app: &QueueTasks) -> crate::Result<Vec<ScheduleInfo>> {
    let global = &app.components().global_config;
    let (states, paused) = tokio::join!(global.get_all(STATES), global.get_all(PAUSED));
    let paused = paused?;
    let mut infos: Vec<ScheduleInfo> = states?
        .values()
        .filter_map(|json| serde_json::from_str::<ScheduleInfo>(json).ok())
        .collect();
    for info in &mut infos {
        info.paused = paused.get(&info.name).is_some_and(|flag| flag == "1");
    }
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(infos)
}

/// Runs the schedules until `stop` says so.
pub(crate) async fn run(
    app: QueueTasks,
    entries: Vec<Arc<Entry>>,
    mut stop: watch::Receiver<bool>,
) {
    if entries.is_empty() {
        return;
    }
    let clock = app.clock();
    let now_ms = || unix_ms(clock.now());
    let global = Arc::clone(&app.components().global_config);

    // Where each schedule stands: slots up to `checked[i]` are handled.
    let recorded: BTreeMap<String, ScheduleInfo> = match read_infos(&app).await {
        Ok(infos) => infos.into_iter().map(|i| (i.name.clone(), i)).collect(),
        Err(error) => {
            tracing::warn!(app = %app.name(), "reading the schedules' last firings failed (missed slots are not caught up): {}", crate::backend::ErrorChain(&error));
            BTreeMap::new()
        }
    };
    let start = now_ms();
    let mut checked = Vec::with_capacity(entries.len());
    let mut checks: Vec<Check> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let last = recorded
            .get(&entry.name)
            .and_then(|info| info.last_slot)
            .map(|secs| (secs * 1000.0).round() as i64);
        if let Some(last) = last {
            checks.extend(recover_at_start(entry, index, last, start));
        }
        // Catch up from the last slot fired, or, before any fired, from an explicit start
        // (no further back than claims last); else start with the slot just passed, if it is
        // on time.
        let horizon = start - entry.claim_ttl(start).as_millis() as i64 / 2;
        let from = match (
            entry.schedule.missed,
            last,
            entry.schedule.explicit_start_ms(),
        ) {
            (Missed::CatchUp(_), Some(last), _) => last.max(horizon),
            (Missed::CatchUp(_), None, Some(first)) => (first - 1).max(horizon),
            _ => start - ON_TIME,
        };
        checked.push(from);
        let mut info = entry.info(entry.schedule.next_slot_ms(start));
        if let Some(previous) = recorded.get(&entry.name) {
            info.last_slot = previous.last_slot;
            info.last_fired_at = previous.last_fired_at;
            info.last_uuid = previous.last_uuid;
        }
        record(&app, &info).await;
    }
    tracing::info!(app = %app.name(), schedules = entries.len(), "scheduler running");

    loop {
        let now = now_ms();
        let next = entries
            .iter()
            .zip(&checked)
            .filter_map(|(entry, after)| entry.schedule.next_slot_ms(*after))
            .chain(checks.iter().map(|check| check.at_ms))
            .min();
        let wait = match next {
            Some(slot) => Duration::from_millis((slot - now).max(0) as u64),
            None => Duration::from_secs(3600), // nothing left to fire; look again later
        };
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(wait) => {}
        }
        let now = now_ms();
        // Slots other workers claimed: their tasks must exist by now.
        let (due_checks, later): (Vec<Check>, Vec<Check>) =
            checks.into_iter().partition(|check| check.at_ms <= now);
        checks = later;
        for check in due_checks {
            let entry = &entries[check.entry];
            let (failures, recovery) = match check.kind {
                CheckKind::Recover { claimed } => {
                    match recover_slot(&app, entry, check.slot_ms, claimed).await {
                        Recovery::Done => continue,
                        Recovery::CheckAgain => {
                            checks.push(Check {
                                at_ms: now + ADD_AGAIN_FIRST,
                                ..check
                            });
                            continue;
                        }
                        Recovery::AddAgain => (1, true),
                    }
                }
                CheckKind::Add { failures, recovery } => {
                    if add(&app, entry, check.slot_ms, recovery).await {
                        continue;
                    }
                    (failures + 1, recovery)
                }
            };
            match Check::add_again(entry, check.entry, check.slot_ms, failures, recovery, now) {
                Some(again) => checks.push(again),
                None => {
                    tracing::error!(app = %app.name(), schedule = %entry.name, failures, "slot {}'s task could not be added before its claim lapsed; the slot is lost", super::format_ms(check.slot_ms));
                }
            }
        }
        let paused = match global.get_all(PAUSED).await {
            Ok(paused) => paused,
            Err(error) => {
                tracing::warn!(app = %app.name(), "reading the paused schedules failed: {}", crate::backend::ErrorChain(&error));
                Default::default()
            }
        };
        for (index, (entry, after)) in entries.iter().zip(checked.iter_mut()).enumerate() {
            let due = entry.schedule.slots_ms(*after, now, LOOK_BACK);
            let Some(&newest) = due.last() else {
                continue;
            };
            *after = newest;
            if paused.get(&entry.name).is_some_and(|flag| flag == "1") {
                continue;
            }
            let late_limit = ON_TIME + entry.schedule.jitter.as_millis() as i64;
            let (missed, on_time): (Vec<i64>, Vec<i64>) =
                due.into_iter().partition(|slot| now - slot > late_limit);
            let mut fire: Vec<i64> = match entry.schedule.missed {
                Missed::Skip => Vec::new(),
                Missed::CatchUp(n) => missed[missed.len().saturating_sub(n as usize)..].to_vec(),
            };
            if !missed.is_empty() && entry.schedule.missed == Missed::Skip {
                tracing::warn!(app = %app.name(), schedule = %entry.name, skipped = missed.len(), "slots passed with no worker to fire them; skipped");
            }
            fire.extend(on_time);
            for slot in fire {
                if let Some(check) = fire_slot(&app, entry, index, slot, now).await {
                    checks.push(check);
                }
            }
        }
    }
}

/// The slots a starting worker checks, as a worker that lost their claims would: those of the
/// claims' life up to `last` (the schedule's last slot recorded).
///
/// A slot whose claimer died (or failed) between its claim and its add is added by the workers
/// that lost the claim, when they check it; but that check lives in their memory. A worker
/// killed in between (or a lone worker, which has no one to check its slots) loses it, and after
/// a restart the slot lies behind the last one recorded, so catching up skips it. Each start
/// therefore checks the slots it could have missed: a slot nobody claimed (paused, skipped,
/// or a slot of an earlier definition of the schedule) is left alone, and one claimed and
/// never marked added is added (see [`recover_slot`]).
fn recover_at_start(entry: &Entry, index: usize, last: i64, start: i64) -> Vec<Check> {
    let horizon = start - entry.claim_ttl(start).as_millis() as i64 / 2;
    // The newest slots of the window (a cursor walks forward; only the last ones are kept).
    let mut slots = std::collections::VecDeque::new();
    let mut cursor = horizon;
    while let Some(slot) = entry.schedule.next_slot_ms(cursor) {
        if slot > last.min(start) {
            break;
        }
        if slots.len() == LOOK_BACK {
            slots.pop_front();
        }
        slots.push_back(slot);
        cursor = slot;
    }
    let settle = CHECK_AFTER + entry.schedule.jitter.as_millis() as i64;
    slots
        .into_iter()
        .map(|slot_ms| Check {
            entry: index,
            slot_ms,
            at_ms: (slot_ms + settle).max(start),
            kind: CheckKind::Recover { claimed: false },
        })
        .collect()
}

/// Claims a slot and, if this worker won it, adds the task (or, with a jitter, says when to)
/// and records the firing. What is left to do about the slot comes back as a [`Check`]: a
/// slot another worker claimed (to check later that it added the task), a jittered add, or an
/// add that failed (to try again: a failed add must not lose the slot).
async fn fire_slot(
    app: &QueueTasks,
    entry: &Entry,
    index: usize,
    slot_ms: i64,
    now: i64,
) -> Option<Check> {
    let global = &app.components().global_config;
    let ttl = entry.claim_ttl(slot_ms);
    let check_later = Check {
        entry: index,
        slot_ms,
        at_ms: slot_ms + CHECK_AFTER + entry.schedule.jitter.as_millis() as i64,
        kind: CheckKind::Recover { claimed: true },
    };
    match global.claim(&slot_key(entry, slot_ms), ttl).await {
        Ok(true) => {}
        Ok(false) => return Some(check_later), // another worker fires it
        Err(error) => {
            // Every worker's claim may have failed alike (the backend restarting), and this
            // worker may not live ten seconds: the slot is checked again soon, as one another
            // worker claimed (its task is added here unless a claimer marked it added). Not
            // before the claimer's jitter and a while for its add: a check that comes first
            // adds the task too (under the slot's id: a second add of it queues nothing while
            // its record lives).
            tracing::warn!(app = %app.name(), schedule = %entry.name, "claiming slot {} failed; checking it again soon: {}", super::format_ms(slot_ms), crate::backend::ErrorChain(&error));
            let jitter = entry.schedule.jitter.as_millis() as i64;
            return Some(Check {
                at_ms: now.max(slot_ms + jitter) + CLAIM_FAILED_CHECK,
                ..check_later
            });
        }
    }
    let jitter = entry.schedule.jitter;
    if !jitter.is_zero() {
        let pause = jitter.mul_f64(random_fraction());
        return Some(Check {
            entry: index,
            slot_ms,
            at_ms: now + pause.as_millis() as i64,
            kind: CheckKind::Add {
                failures: 0,
                recovery: false,
            },
        });
    }
    if add(app, entry, slot_ms, false).await {
        None
    } else {
        Check::add_again(entry, index, slot_ms, 1, false, now)
    }
}

enum Recovery {
    /// The task was added (its mark is there), another check adds it, nobody claimed the slot,
    /// or this check added it.
    Done,
    /// The marks could not be read: look again later.
    CheckAgain,
    /// This check took the slot over and its add failed: it adds the task again later.
    AddAgain,
}

/// Checks a slot some worker claimed (or, unless `claimed`, may have): if its claimer did not
/// mark it added (it died or failed between its claim and its add), the one check that takes
/// the mark adds the task, under the slot's id. A claimer still adding (slow, or trying again)
/// may add it too: an add of a known id queues nothing new, so the task runs once.
async fn recover_slot(app: &QueueTasks, entry: &Entry, slot_ms: i64, claimed: bool) -> Recovery {
    let global = &app.components().global_config;
    let ttl = entry.claim_ttl(slot_ms);
    let slot = super::format_ms(slot_ms);
    if !claimed {
        // A slot from before this worker started: nobody claimed it (paused, skipped, not a
        // slot of the schedule as it was then) means it was not to fire. Taking its claim
        // here fires nothing: the slot has passed.
        match global.claim(&slot_key(entry, slot_ms), ttl).await {
            Ok(true) => return Recovery::Done,
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(app = %app.name(), schedule = %entry.name, "checking slot {slot} failed (checking again): {}", crate::backend::ErrorChain(&error));
                return Recovery::CheckAgain;
            }
        }
    }
    match global.claim(&added_key(entry, slot_ms), ttl).await {
        Ok(false) => Recovery::Done,
        Ok(true) => {
            tracing::warn!(app = %app.name(), schedule = %entry.name, "slot {slot} was claimed by a worker that did not add its task; adding it here");
            if add(app, entry, slot_ms, true).await {
                Recovery::Done
            } else {
                Recovery::AddAgain
            }
        }
        Err(error) => {
            tracing::warn!(app = %app.name(), schedule = %entry.name, "checking slot {slot} failed (checking again): {}", crate::backend::ErrorChain(&error));
            Recovery::CheckAgain
        }
    }
}

/// Adds the slot's task under the slot's id (adding a known id again queues nothing new, so a
/// second try after a lost reply is safe) and marks the slot added; `false` if the add failed.
/// The firing is recorded (the schedule's last slot) unless this is a `recovery` of an older
/// slot.
async fn add(app: &QueueTasks, entry: &Entry, slot_ms: i64, recovery: bool) -> bool {
    let uuid = slot_uuid(&app.name(), &entry.name, slot_ms);
    match entry.call.add_as(app, Some(uuid)).await {
        Ok(handle) => {
            tracing::info!(app = %app.name(), schedule = %entry.name, task = %entry.call.task_name, uuid = %handle.uuid(), "schedule fired slot {}", super::format_ms(slot_ms));
            if recovery {
                // The check took the mark before adding.
                return true;
            }
            let global = &app.components().global_config;
            if let Err(error) = global
                .claim(&added_key(entry, slot_ms), entry.claim_ttl(slot_ms))
                .await
            {
                // A check will add it again; the add of a known id queues nothing new.
                tracing::debug!(app = %app.name(), schedule = %entry.name, "marking slot {} added failed: {}", super::format_ms(slot_ms), crate::backend::ErrorChain(&error));
            }
            let mut info = entry.info(entry.schedule.next_slot_ms(slot_ms));
            info.last_slot = Some(slot_ms as f64 / 1000.0);
            info.last_fired_at = Some(crate::backend::unix_now());
            info.last_uuid = Some(handle.uuid());
            record(app, &info).await;
            true
        }
        Err(error) => {
            tracing::error!(app = %app.name(), schedule = %entry.name, "adding the task of slot {} failed (trying again): {}", super::format_ms(slot_ms), crate::backend::ErrorChain(&error));
            false
        }
    }
}

async fn record(app: &QueueTasks, info: &ScheduleInfo) {
    let Ok(json) = serde_json::to_string(info) else {
        return;
    };
    if let Err(error) = app
        .components()
        .global_config
        .set(STATES, &info.name, &json)
        .await
    {
        tracing::warn!(app = %app.name(), schedule = %info.name, "recording the schedule failed: {}", crate::backend::ErrorChain(&error));
    }
}

/// A number in `[0, 1)`, random enough to spread firings (from a fresh uuid's bits: no
/// dependency for it).
fn random_fraction() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64;
    (bits >> 11) as f64 / (1u64 << 53) as f64
}
