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

/// A slot another worker claimed, to check at `at_ms`.
struct Check {
    entry: usize,
    slot_ms: i64,
    at_ms: i64,
}

/// One registered schedule.
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) schedule: Schedule,
    pub(crate) call: TaskCall,
}

impl Entry {
    pub(crate) fn info(&self, next_ms: Option<i64>) -> ScheduleInfo {
        ScheduleInfo {
            name: self.name.clone(),
            task: self.call.task_name.clone(),
            when: self.schedule.to_string(),
            next_at: next_ms.map(|ms| ms as f64 / 1000.0),
            last_slot: None,
            last_fired_at: None,
            last_uuid: None,
            paused: false,
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
    let global = &app.inner.global_config;
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
    let global = Arc::clone(&app.inner.global_config);

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
    for entry in &entries {
        let last = recorded
            .get(&entry.name)
            .and_then(|info| info.last_slot)
            .map(|secs| (secs * 1000.0).round() as i64);
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

    let mut checks: Vec<Check> = Vec::new();
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
            recover_slot(&app, &entries[check.entry], check.slot_ms).await;
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
                if !fire_slot(&app, entry, slot).await {
                    checks.push(Check {
                        entry: index,
                        slot_ms: slot,
                        at_ms: slot + CHECK_AFTER + entry.schedule.jitter.as_millis() as i64,
                    });
                }
            }
        }
    }
}

/// Claims a slot and, if this worker won it, adds the task (after the jitter, if any) and
/// records the firing. `false`: another worker claimed it (check later that it added it).
async fn fire_slot(app: &QueueTasks, entry: &Arc<Entry>, slot_ms: i64) -> bool {
    let global = &app.inner.global_config;
    let ttl = entry.claim_ttl(slot_ms);
    let key = format!("schedule:{}:{slot_ms}", entry.name);
    match global.claim(&key, ttl).await {
        Ok(true) => {}
        Ok(false) => return false, // another worker fires it
        Err(error) => {
            tracing::error!(app = %app.name(), schedule = %entry.name, "claiming slot {} failed; not fired here: {}", super::format_ms(slot_ms), crate::backend::ErrorChain(&error));
            return false;
        }
    }
    let jitter = entry.schedule.jitter;
    if jitter.is_zero() {
        add(app, entry, slot_ms).await;
    } else {
        let (app, entry) = (app.clone(), Arc::clone(entry));
        let pause = jitter.mul_f64(random_fraction());
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            add(&app, &entry, slot_ms).await;
        });
    }
    true
}

/// A slot another worker claimed: if its task is not there, that worker died between its
/// claim and its add; one checker (by a second claim) adds it now, under the same id.
async fn recover_slot(app: &QueueTasks, entry: &Entry, slot_ms: i64) {
    let uuid = slot_uuid(&app.name(), &entry.name, slot_ms);
    let missing = match app.get(uuid).await {
        // Taken or ended. A task still `new` is added again below: on a broker that writes
        // the record before the message (RabbitMQ), a claimer that died in between left a
        // record no message will start; an add of a known id that waits only queues it again.
        Ok(Some(record)) if record.status != crate::TaskStatus::New => return,
        Ok(record) => record.is_none(),
        Err(error) => {
            tracing::warn!(app = %app.name(), schedule = %entry.name, "checking slot {} failed: {}", super::format_ms(slot_ms), crate::backend::ErrorChain(&error));
            return;
        }
    };
    let key = format!("schedule:{}:{slot_ms}:recover", entry.name);
    if let Ok(true) = app
        .inner
        .global_config
        .claim(&key, entry.claim_ttl(slot_ms))
        .await
    {
        if missing {
            tracing::warn!(app = %app.name(), schedule = %entry.name, "slot {} was claimed by a worker that did not add its task; adding it here", super::format_ms(slot_ms));
        } else {
            tracing::debug!(app = %app.name(), schedule = %entry.name, "slot {}'s task still waits; adding it again (it runs once)", super::format_ms(slot_ms));
        }
        add(app, entry, slot_ms).await;
    }
}

async fn add(app: &QueueTasks, entry: &Entry, slot_ms: i64) {
    let uuid = slot_uuid(&app.name(), &entry.name, slot_ms);
    match entry.call.add_as(app, Some(uuid)).await {
        Ok(handle) => {
            tracing::info!(app = %app.name(), schedule = %entry.name, task = %entry.call.task_name, uuid = %handle.uuid(), "schedule fired slot {}", super::format_ms(slot_ms));
            let mut info = entry.info(entry.schedule.next_slot_ms(slot_ms));
            info.last_slot = Some(slot_ms as f64 / 1000.0);
            info.last_fired_at = Some(crate::backend::unix_now());
            info.last_uuid = Some(handle.uuid());
            record(app, &info).await;
        }
        Err(error) => {
            tracing::error!(app = %app.name(), schedule = %entry.name, "adding the task of slot {} failed: {}", super::format_ms(slot_ms), crate::backend::ErrorChain(&error));
        }
    }
}

async fn record(app: &QueueTasks, info: &ScheduleInfo) {
    let Ok(json) = serde_json::to_string(info) else {
        return;
    };
    if let Err(error) = app.inner.global_config.set(STATES, &info.name, &json).await {
        tracing::warn!(app = %app.name(), schedule = %info.name, "recording the schedule failed: {}", crate::backend::ErrorChain(&error));
    }
}

/// A number in `[0, 1)`, random enough to spread firings (from a fresh uuid's bits: no
/// dependency for it).
fn random_fraction() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64;
    (bits >> 11) as f64 / (1u64 << 53) as f64
}
