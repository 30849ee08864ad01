//! Disk full: the node keeps a free-space reserve on its data filesystem. Below it,
//! submissions get 507 `storage-full` before anything is applied or written; nothing
//! acknowledged is lost; and once space is freed, submissions are accepted again without a
//! restart.
//!
//! The full test runs the node on a size-limited tmpfs (it needs permission to mount, as
//! root on the CI machine); where mounting is not allowed it says so and only the
//! unprivileged check below runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::Rng;
use tally_core::Hash;
use tally_core::entry::Entry;
use tally_ledger::{Ledger, LedgerConfig};
use tally_tests::{collective_key, random_receipt};

use crate::node::{TestNode, standard, start_with};

const MIB: u64 = 1 << 20;

/// A tmpfs of `mib` MiB mounted at `at`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn free(&self) -> u64 {
        let fs = rustix::fs::statvfs(&self.0).unwrap();
        fs.f_bavail * fs.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

async fn submit(node: &TestNode, entries: &[Entry]) -> (u16, Option<String>, serde_json::Value) {
    let body = tally_core::submission::binary_body(entries);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/entries", node.base))
        .header("content-type", "application/vnd.tally.entries")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry, r.json().await.unwrap())
}

/// Acknowledged receipts by receipt id, with their sequence numbers.
fn record_acks(entries: &[Entry], answer: &serde_json::Value, acked: &mut HashMap<Hash, u64>) {
    for (entry, result) in entries.iter().zip(answer["results"].as_array().unwrap()) {
        assert_eq!(result["status"], "appended", "{result}");
        acked.insert(entry.receipt_id().unwrap(), result["seq"].as_u64().unwrap());
    }
}

/// Without mounting anything: a reserve larger than the free space refuses every
/// submission with 507 and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_above_free_space_refuses_and_changes_nothing() {
    let node = start_with(None, |c| c.min_free_bytes = Some(u64::MAX)).await;
    let (status, retry, problem) = submit(&node, &tally_tests::setup(1)).await;
    assert_eq!(status, 507, "{problem}");
    assert_eq!(retry.as_deref(), Some("10"));
    assert_eq!(problem["code"], "storage-full");
    assert_eq!(problem["type"], "urn:tally:problem:storage-full");
    assert_eq!(node.node.state().ledger.size(), 0, "nothing was written");
    node.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_loses_nothing_and_resumes() {
    let root = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&root.path().join("mnt"), 48) else {
        eprintln!("disk-full test skipped: cannot mount a tmpfs here (needs root); the reserve check still ran");
        return;
    };
    let reserve = 8 * MIB;
    let data = fs.0.join("data");
    let node = start_with(None, |c| {
        c.data = Some(data.clone());
        c.min_free_bytes = Some(reserve);
    })
    .await;
    standard(&node).await;
    // Leave about 3 MiB above the reserve: a few thousand receipts of write-ahead log.
    let ballast = fs.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; (fs.free() - reserve - 3 * MIB) as usize]).unwrap();

    let mut rng = rand::thread_rng();
    let mut acked = HashMap::new();
    let mut refused = None;
    for _ in 0..1000 {
        let batch: Vec<Entry> = (0..200).map(|_| random_receipt(1 + rng.gen_range(0..2), &mut rng)).collect();
        let size = node.node.state().ledger.size();
        let (status, retry, answer) = submit(&node, &batch).await;
        match status {
            200 => record_acks(&batch, &answer, &mut acked),
            507 => {
                assert_eq!(answer["code"], "storage-full", "{answer}");
                assert_eq!(retry.as_deref(), Some("10"));
                assert_eq!(node.node.state().ledger.size(), size, "a refused submission wrote nothing");
                refused = Some(batch);
                break;
            }
            other => panic!("only 200 or 507 expected, got {other}: {answer}"),
        }
    }
    let refused = refused.expect("the reserve was reached");
    assert!(acked.len() > 1000, "receipts were accepted before the disk filled ({})", acked.len());
    // Reads still work while full.
    assert_eq!(node.get_status("/checkpoint").await, 200);

    // Space returns: the refused batch and new ones are accepted, no restart needed.
    std::fs::remove_file(&ballast).unwrap();
    let (status, _, answer) = submit(&node, &refused).await;
    assert_eq!(status, 200, "{answer}");
    record_acks(&refused, &answer, &mut acked);
    node.node.shutdown().await;

    // Every acknowledged receipt is present exactly once, at its acknowledged position, and
    // the whole ledger audits.
    let ledger = Ledger::open(&data, LedgerConfig::new(None)).unwrap();
    let store = ledger.store();
    let size = ledger.size();
    for (id, seq) in &acked {
        assert!(*seq < size, "acknowledged seq {seq} beyond size {size}");
        assert_eq!(store.entry(*seq).unwrap().map(|e| e.receipt_id()), Some(Some(*id)), "entry at {seq}");
        assert_eq!(ledger.dedup(id).unwrap(), Some(*seq), "dedup of the receipt at {seq}");
        assert_eq!(store.entry(*seq).unwrap().unwrap().receipt_id(), Some(*id));
    }
    let report = tally_tests::audit_ledger(&ledger, collective_key().public_key());
    assert!(report.ok, "{}", report.summary());
    eprintln!(
        "disk-full test: {} receipts acknowledged around a 507 on a 48 MiB tmpfs; all present, audit passed",
        acked.len()
    );
    drop(ledger);
}
