//! The client SDK against a real node: a crawler's receipts settle once however often they
//! are retried; a publisher verifies its statement line by line against a checkpoint it
//! verified; a forked log (two histories signed by the same key), a checkpoint under
//! another key and a wrong inclusion proof are all refused, the fork with evidence kept.

use tally_client::{Client, Crawler, Verifier, VerifyError, check_line};
use tally_core::checkpoint::open_checkpoint;
use tally_core::entry::Usage;
use tally_tests::*;

use crate::node::{TestNode, standard, start, start_with};

fn verifier(node: &TestNode, dir: &std::path::Path) -> Verifier {
    Verifier::new(Client::new(&node.base), ORIGIN, collective_key().public_key(), dir)
}

/// A crawler signs, batches and submits; a full retry of the same receipts is answered
/// with the originals and charges nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawler_receipts_settle_once() {
    let node = start().await;
    standard(&node).await;
    let client = Client::new(&node.base);
    let mut crawler = Crawler::new(client.clone(), lab_key(1), 1, contract_id(1));
    for i in 0..1500 {
        crawler
            .receipt(&format!("https://news.example/c/{i}"), b"<html>", Usage::AiInput, FETCH_TIME_BASE_MS + i)
            .unwrap();
    }
    let snapshot: Vec<_> = (0..1500).collect();
    let results = crawler.flush().await.unwrap();
    assert_eq!(results.len(), snapshot.len());
    assert!(results.iter().all(|r| r.status == "appended"), "{:?}", results.iter().find(|r| r.status != "appended"));
    assert_eq!(results[1499].index, 1499);
    assert_eq!(results[0].charge.as_ref().unwrap().amount, "0.002000");
    // The same signed receipts again (as after a lost answer): originals, no new charge.
    let entries: Vec<_> = (0..3).map(|i| receipt(&lab_key(1), 1, 900_000 + i, [i as u8; 16])).collect();
    let first = client.submit(&entries).await.unwrap();
    let again = client.submit(&entries).await.unwrap();
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a.status, "appended");
        assert_eq!(b.status, "duplicate");
        assert_eq!((a.seq, &a.leaf_hash, &a.charge), (b.seq, &b.leaf_hash, &b.charge));
    }
    // Minimal answers: the original positions, without the charge.
    let minimal = client.submit_minimal(&entries).await.unwrap();
    for (a, m) in first.iter().zip(&minimal) {
        assert_eq!(m.status, "duplicate");
        assert_eq!((a.seq, &a.leaf_hash, a.time_ms), (m.seq, &m.leaf_hash, m.time_ms));
        assert_eq!((&m.charge, &m.postings, &m.kind), (&None, &None, &None));
    }
    #[derive(serde::Deserialize)]
    struct Spend {
        escrow: String,
    }
    let spend: Spend = client.get_signed(&lab_key(1), "/v1/labs/1/spend").await.unwrap();
    assert_eq!(spend.escrow, "999996.994000", "1,503 receipts at 0.002 each, once");
    node.node.shutdown().await;
}

/// A publisher verifies every statement line (signatures, leaf record, inclusion under a
/// checkpoint it verified and stored); a later checkpoint is checked for consistency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_verifies_its_statement() {
    let node = start().await;
    standard(&node).await;
    let mut rng = rand::thread_rng();
    node.submit_ok(&(0..40).map(|_| random_receipt(1, &mut rng)).collect::<Vec<_>>()).await;
    node.checkpoint_at_size().await;
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(&node, dir.path());
    let (cp, lines) = v.verify_statement(&participant_key(PUBLISHER_ID), PUBLISHER_ID, 0).await.unwrap();
    assert_eq!(lines.len(), 40);
    assert!(lines.iter().all(|l| l.credited[0].amount == "0.001700"));
    assert_eq!(v.last_verified().unwrap().unwrap().1, cp);
    node.submit_ok(&(0..10).map(|_| random_receipt(2, &mut rng)).collect::<Vec<_>>()).await;
    node.checkpoint_at_size().await;
    let newer = v.update().await.unwrap();
    assert!(newer.size > cp.size, "a consistent, larger checkpoint is accepted");
    node.node.shutdown().await;
}

/// Two histories signed by the same key: after verifying one, the other's checkpoint is
/// refused as a fork and both notes are kept as evidence; a checkpoint under another key
/// is refused; a wrong inclusion proof is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_foreign_keys_and_bad_proofs_are_refused() {
    let a = start().await;
    let b = start().await;
    standard(&a).await;
    standard(&b).await;
    let mut rng = rand::thread_rng();
    a.submit_ok(&(0..5).map(|_| random_receipt(1, &mut rng)).collect::<Vec<_>>()).await;
    b.submit_ok(&(0..9).map(|_| random_receipt(2, &mut rng)).collect::<Vec<_>>()).await;
    a.checkpoint_at_size().await;
    b.checkpoint_at_size().await;
    let dir = tempfile::tempdir().unwrap();
    let seen = verifier(&a, dir.path()).update().await.unwrap();
    match verifier(&b, dir.path()).update().await {
        Err(VerifyError::Inconsistent { old_size, evidence, .. }) => {
            assert_eq!(old_size, seen.size);
            let kept = std::fs::read_to_string(evidence.join("verified.note")).unwrap();
            let other = std::fs::read_to_string(evidence.join("conflicting.note")).unwrap();
            let key = collective_key().public_key();
            assert_eq!(open_checkpoint(&kept, ORIGIN, &key).unwrap(), seen);
            assert!(open_checkpoint(&other, ORIGIN, &key).unwrap().size > seen.size);
        }
        other => panic!("expected a fork to be detected: {other:?}"),
    }
    assert_eq!(verifier(&a, dir.path()).last_verified().unwrap().unwrap().1, seen, "the verified checkpoint stays");
    // A node run under another key: its checkpoints do not verify under the pinned key.
    let foreign = start_with(None, |c| {
        let key_file = c.data.as_ref().unwrap().parent().unwrap().join("other.key");
        std::fs::write(&key_file, hex::encode([0x99u8; 32])).unwrap();
        c.key_file = Some(key_file);
    })
    .await;
    let g = genesis(&tally_core::sig::SigningKey::from_seed(&[0x99; 32]));
    foreign.submit_ok(&[g]).await;
    let foreign_client = Client::new(&foreign.base);
    for _ in 0..100 {
        if foreign_client.checkpoint_note().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let fresh = tempfile::tempdir().unwrap();
    assert!(matches!(verifier(&foreign, fresh.path()).update().await, Err(VerifyError::BadCheckpoint(_))));
    // A wrong inclusion proof for a real receipt.
    let r = receipt(&lab_key(1), 1, 5, [5; 16]);
    let res = a.submit_ok(std::slice::from_ref(&r)).await;
    let seq = res[0]["seq"].as_u64().unwrap();
    let time = res[0]["time_ms"].as_u64().unwrap();
    a.checkpoint_at_size().await;
    let cp = verifier(&a, dir.path()).update().await.unwrap();
    let client = Client::new(&a.base);
    let mut proof = client.inclusion_proof(seq, cp.size).await.unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, r.as_bytes());
    check_line(&b64, seq, time, &proof, &cp).unwrap();
    proof[0][0] ^= 1;
    assert!(matches!(check_line(&b64, seq, time, &proof, &cp), Err(VerifyError::BadLine { .. })));
    assert!(matches!(
        check_line(&b64, seq + 1, time, &client.inclusion_proof(seq + 1, cp.size).await.unwrap_or_default(), &cp),
        Err(VerifyError::BadLine { .. })
    ));
    for n in [a, b, foreign] {
        n.node.shutdown().await;
    }
}
