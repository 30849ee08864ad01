//! RocksDB's background threads (memtable flushes, compactions) yield the CPU to ingest.
//!
//! A flush or compaction is work that can wait a few milliseconds; an acknowledgement
//! cannot. At half the peak load the node's foreground threads keep both cores about 70%
//! busy, and a flush arriving on top pushed them to saturation for tens of milliseconds:
//! the slow acknowledgements came in clusters that matched RocksDB's flushes and
//! compactions in its LOG. Linux's `SCHED_IDLE` class runs a thread only on CPU nobody else
//! wants, and a waking foreground thread preempts it at once. `nice 19` (what RocksDB's own
//! `LowerThreadPoolCPUPriority` sets) does not: once picked, a niced thread still runs its
//! whole time slice, and measured no better than no change at all.
//!
//! RocksDB starts its pool threads lazily (at the first flush), so the sequencer calls
//! [`idle_background_threads`] now and then, not just once.
//!
//! The one `unsafe` call in this crate is here: `sched_setscheduler` has no safe wrapper in
//! `rustix`, and the policy of threads RocksDB created cannot be set any other way.

/// Put every RocksDB background thread of this process (named `rocksdb:…`) in the
/// `SCHED_IDLE` class. Returns how many threads are now in it. Threads that exit meanwhile
/// are skipped; elsewhere than on Linux this does nothing.
pub(crate) fn idle_background_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    let mut idle = 0;
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else { continue };
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("rocksdb:") && set_idle(tid).is_ok() {
            idle += 1;
        }
    }
    idle
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_idle(tid: i32) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call, which only reads it.
    // `tid` is a plain integer: a thread that has exited makes the call fail with ESRCH.
    let rc = unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn set_idle(_tid: i32) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// The scheduling policy of thread `tid` of this process, from `/proc` (field 41 of `stat`).
#[cfg(test)]
pub(crate) fn policy_of(tid: &str) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(41 - 3).and_then(|p| p.parse().ok())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// After a flush has started RocksDB's pool, its threads end up in `SCHED_IDLE` (policy
    /// 5) and no other thread of the process does.
    #[test]
    fn rocksdb_threads_become_idle_and_no_others() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::Store::open(dir.path()).expect("open");
        store.flush().expect("flush starts a background thread");
        assert!(idle_background_threads() >= 1, "RocksDB has background threads after a flush");
        let mut seen = 0;
        for task in std::fs::read_dir("/proc/self/task").expect("tasks").flatten() {
            let tid = task.file_name().into_string().expect("a number");
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let Some(policy) = policy_of(&tid) else { continue };
            if comm.starts_with("rocksdb:") {
                assert_eq!(policy, 5, "{comm}");
                seen += 1;
            } else {
                assert_ne!(policy, 5, "{comm}");
            }
        }
        assert!(seen >= 1);
    }
}
