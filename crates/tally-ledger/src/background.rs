//! RocksDB's background threads (memtable flushes, compactions) yield the CPU to ingest,
//! unless they fall behind.
//!
//! A flush or compaction is work that can wait a few milliseconds; an acknowledgement
//! cannot. At half the peak load the node's foreground threads keep both cores 75–90% busy,
//! and a flush on top pushed them to saturation for tens of milliseconds: slow
//! acknowledgements came in clusters that matched RocksDB's flushes and compactions in its
//! LOG. Linux's `SCHED_IDLE` class runs a thread only on CPU nobody else wants, and a waking
//! foreground thread preempts it at once. `nice 19` (what RocksDB's own
//! `LowerThreadPoolCPUPriority` sets) does not: once picked, a niced thread still runs its
//! whole time slice, and it measured no better than no change at all.
//!
//! Idle-class threads get almost nothing while anything else wants the CPU: at saturation,
//! or beside a busy neighbour process, flushes would wait until RocksDB stops writes. So a
//! watcher thread reads RocksDB's backlog four times a second and moves the background
//! threads back to the normal class while it is large ([`Backlog`]), and to the idle class
//! again once it is small. The watcher also catches threads RocksDB starts later (its pools
//! start them lazily, at the first flush).
//!
//! RocksDB's pools are shared by every database in a process; this is made for a process
//! with one ledger that appends, the node.
//!
//! The one `unsafe` call in this crate is here: `sched_setscheduler` has no safe wrapper in
//! `rustix`, and the class of threads RocksDB created cannot be set any other way.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::store::{Backlog, Store};

/// How often the watcher reads the backlog.
const TICK: Duration = Duration::from_millis(250);
/// Ticks a memtable may wait for its flush before that counts as falling behind (a flush
/// normally takes 0.1–1 s; at half load the largest memtable fills in about 4 s).
const IMMUTABLE_TICKS_MAX: u32 = 4;

/// The scheduling class RocksDB's background threads are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// `SCHED_IDLE`: only CPU no other thread wants.
    Idle,
    /// `SCHED_OTHER` at nice 0, like every other thread: while they are behind.
    Normal,
}

/// The class for the next tick, from the current one, the backlog, and for how many ticks
/// in a row a memtable has been waiting for its flush.
pub(crate) fn next_class(current: Class, backlog: &Backlog, immutable_ticks: u32) -> Class {
    let behind = backlog.writes_held_back
        || backlog.level0_files >= 8
        || backlog.pending_compaction_bytes >= 1 << 30
        || immutable_ticks >= IMMUTABLE_TICKS_MAX;
    let caught_up = !backlog.writes_held_back
        && backlog.level0_files <= 4
        && backlog.pending_compaction_bytes < 256 << 20
        && backlog.immutable_memtables == 0;
    match current {
        Class::Idle if behind => Class::Normal,
        Class::Normal if caught_up => Class::Idle,
        unchanged => unchanged,
    }
}

/// The thread that keeps RocksDB's background threads in the right class.
#[derive(Debug)]
pub(crate) struct Watcher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    pub(crate) fn start(store: Store) -> std::io::Result<Self> {
        let (stop, stopped) = channel();
        let thread =
            std::thread::Builder::new().name("tally-bg-watch".into()).spawn(move || watch(&store, &stopped))?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }

    /// Stop watching and leave the background threads in the normal class (a shutdown's
    /// final flush should not wait for idle CPU).
    pub(crate) fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn watch(store: &Store, stopped: &Receiver<()>) {
    let mut class = Class::Idle;
    let mut immutable_ticks = 0;
    loop {
        // A backlog that cannot be read (the store closing) counts as caught up: the class
        // is only ever a matter of latency.
        let backlog = store.backlog().unwrap_or_default();
        immutable_ticks = if backlog.immutable_memtables > 0 { immutable_ticks + 1 } else { 0 };
        class = next_class(class, &backlog, immutable_ticks);
        set_background_class(class);
        match stopped.recv_timeout(TICK) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    set_background_class(Class::Normal);
}

/// Put every RocksDB background thread of this process (named `rocksdb:…`) in `class`.
/// Returns how many threads are now in it. Threads that exit meanwhile are skipped;
/// elsewhere than on Linux this does nothing.
pub(crate) fn set_background_class(class: Class) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    let mut set = 0;
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else { continue };
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("rocksdb:") && set_class(tid, class).is_ok() {
            set += 1;
        }
    }
    set
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_class(tid: i32, class: Class) -> std::io::Result<()> {
    let policy = match class {
        Class::Idle => libc::SCHED_IDLE,
        Class::Normal => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call, which only reads it.
    // `tid` is a plain integer: a thread that has exited makes the call fail with ESRCH.
    let rc = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn set_class(_tid: i32, _class: Class) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The scheduling policy of thread `tid` of this process, from `/proc` (field 41 of
    /// `stat`).
    fn policy_of(tid: &str) -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        rest.split_whitespace().nth(41 - 3).and_then(|p| p.parse().ok())
    }

    /// Policies of this process's threads: (RocksDB's, everyone else's).
    fn policies() -> (Vec<u32>, Vec<u32>) {
        let (mut rocksdb, mut others) = (Vec::new(), Vec::new());
        for task in std::fs::read_dir("/proc/self/task").expect("tasks").flatten() {
            let tid = task.file_name().into_string().expect("a number");
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let Some(policy) = policy_of(&tid) else { continue };
            if comm.starts_with("rocksdb:") { rocksdb.push(policy) } else { others.push(policy) }
        }
        (rocksdb, others)
    }

    /// After a flush has started RocksDB's pool, its threads go to `SCHED_IDLE` (policy 5)
    /// and back to `SCHED_OTHER` (0); no other thread of the process is touched.
    #[test]
    fn rocksdb_threads_move_between_classes_and_no_others() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open");
        store.flush().expect("flush starts a background thread");
        assert!(set_background_class(Class::Idle) >= 1, "RocksDB has background threads after a flush");
        let (rocksdb, others) = policies();
        assert!(!rocksdb.is_empty() && rocksdb.iter().all(|p| *p == 5), "{rocksdb:?}");
        assert!(others.iter().all(|p| *p != 5), "{others:?}");
        assert!(set_background_class(Class::Normal) >= 1);
        let (rocksdb, _) = policies();
        assert!(rocksdb.iter().all(|p| *p == 0), "{rocksdb:?}");
    }

    /// Idle until behind on any count, normal until caught up on every count; in between
    /// the class stays as it is.
    #[test]
    fn the_class_follows_the_backlog_with_hysteresis() {
        let calm = Backlog::default();
        let behind = [
            Backlog { writes_held_back: true, ..calm },
            Backlog { level0_files: 8, ..calm },
            Backlog { pending_compaction_bytes: 1 << 30, ..calm },
        ];
        for b in &behind {
            assert_eq!(next_class(Class::Idle, b, 0), Class::Normal, "{b:?}");
        }
        // A memtable waiting for its flush: normal for a moment, too long only after a second.
        let waiting = Backlog { immutable_memtables: 1, ..calm };
        assert_eq!(next_class(Class::Idle, &waiting, IMMUTABLE_TICKS_MAX - 1), Class::Idle);
        assert_eq!(next_class(Class::Idle, &waiting, IMMUTABLE_TICKS_MAX), Class::Normal);
        // Between the two thresholds nothing changes, either way.
        let between = Backlog { level0_files: 6, ..calm };
        assert_eq!(next_class(Class::Idle, &between, 0), Class::Idle);
        assert_eq!(next_class(Class::Normal, &between, 0), Class::Normal);
        assert_eq!(next_class(Class::Normal, &waiting, 0), Class::Normal);
        assert_eq!(next_class(Class::Normal, &calm, 0), Class::Idle);
    }
}
