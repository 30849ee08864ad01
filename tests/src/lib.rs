//! Fixtures shared by Tally's integration tests, crash child and benchmarks: deterministic
//! keys and well-formed, validly signed entries, and a standard ledger set-up (collective,
//! publisher, labs with accepted contracts and funded escrow) that receipts settle against.

use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};
use tally_core::Hash;
use tally_core::codec::{List, Text};
use tally_core::decimal::Dec;
use tally_core::entry::{Body, Entry, Genesis, Receipt, ReceiptCore, Usage, VerifiedEntry};
use tally_core::kinds::{
    Accept, Admit, ChargeBasis, ContractTerms, Deposit, Distribution, Licence, Rate, Register, Role, Tier, UrlPattern,
};
use tally_core::sig::SigningKey;

/// The origin used by test ledgers.
pub const ORIGIN: &str = "tally.test/collective";
/// The publisher that owns `https://news.example/` in the standard set-up.
pub const PUBLISHER_ID: u64 = 1000;
/// Fetch times of fixture receipts start here (2023-11-14); the standard contracts run
/// from 2020 to 2100.
pub const FETCH_TIME_BASE_MS: u64 = 1_700_000_000_000;
/// What the standard contract charges per article, in micro-dollars.
pub const PRICE_MICROS: u64 = 2000;
/// What the standard set-up deposits into each lab's escrow, in micro-dollars.
pub const DEPOSIT_MICROS: i128 = 1_000_000_000_000;

/// The collective's key in test ledgers.
pub fn collective_key() -> SigningKey {
    SigningKey::from_seed(&[0xc0; 32])
}

/// The key of test lab `n` (participant id `n`).
pub fn lab_key(n: u8) -> SigningKey {
    SigningKey::from_seed(&[n; 32])
}

/// A deterministic key for any participant id (used by scenario tests).
pub fn participant_key(id: u64) -> SigningKey {
    let seed: [u8; 32] =
        Sha256::new().chain_update(b"tally-tests/participant\0").chain_update(id.to_le_bytes()).finalize().into();
    SigningKey::from_seed(&seed)
}

/// A genesis entry for a USD ledger at 6 decimals.
pub fn genesis(key: &SigningKey) -> Entry {
    let body = Genesis {
        origin: Text::new(ORIGIN).expect("short"),
        collective_name: Text::new("Test Collective").expect("short"),
        collective_key: key.public_bytes(),
        asset_code: Text::new("USD").expect("short"),
        asset_scale: 6,
        created_ms: 1_700_000_000_000,
    };
    Entry::sign(key, Body::Genesis(body)).expect("valid genesis")
}

/// The standard contract for lab `lab_id`: transactional, every fetch, 0.002 per article,
/// a 15% fee, any AI use or search, a generous credit limit.
pub fn standard_terms(lab_id: u64) -> ContractTerms {
    ContractTerms {
        lab: lab_id,
        name: Text::new(format!("Standard licence for lab {lab_id}")).expect("short"),
        scope: List::new(vec![Usage::AiAll, Usage::Search]).expect("short"),
        start_ms: 1_577_836_800_000,
        end_ms: 4_102_444_800_000,
        licence: Licence::Transactional,
        basis: ChargeBasis::EveryFetch,
        rate: Rate { per_article: Dec::new(PRICE_MICROS, 6).expect("small"), per_kwords: Dec::ZERO },
        tier_multipliers: [Dec::ONE; 3],
        rate_table: List::default(),
        free_paths: List::default(),
        spend_cap: 0,
        credit_limit: 1_000_000_000_000,
        fee_bps: 1500,
        distribution: Distribution::PerUsage,
        unregistered_words: 800,
    }
}

/// The id of lab `lab_id`'s standard contract.
pub fn contract_id(lab_id: u64) -> Hash {
    standard_terms(lab_id).id()
}

fn signed(key: &SigningKey, body: Body) -> Entry {
    Entry::sign(key, body).expect("fixture entries are well-formed")
}

/// The entries that admit lab `n`, give it its standard contract, accept it and fund it.
pub fn lab_setup(n: u8) -> Vec<Entry> {
    let c = collective_key();
    let id = u64::from(n);
    let lab = lab_key(n);
    vec![
        signed(
            &c,
            Body::Admit(Admit {
                participant: id,
                role: Role::Lab,
                key: lab.public_bytes(),
                name: Text::new(format!("Lab {n}")).expect("short"),
            }),
        ),
        signed(&c, Body::Contract(standard_terms(id))),
        signed(&lab, Body::Accept(Accept { contract_id: contract_id(id) })),
        signed(
            &c,
            Body::Deposit(Deposit {
                participant: id,
                amount: DEPOSIT_MICROS as u64,
                reference: Text::new(format!("wire-lab-{n}")).expect("short"),
            }),
        ),
    ]
}

/// Genesis, a publisher owning `https://news.example/`, and labs `1..=labs` set up by
/// [`lab_setup`]: after these, fixture receipts by those labs settle.
pub fn setup(labs: u8) -> Vec<Entry> {
    let c = collective_key();
    let publisher = participant_key(PUBLISHER_ID);
    let mut out = vec![
        genesis(&c),
        signed(
            &c,
            Body::Admit(Admit {
                participant: PUBLISHER_ID,
                role: Role::Publisher,
                key: publisher.public_bytes(),
                name: Text::new("News Example").expect("short"),
            }),
        ),
        signed(
            &publisher,
            Body::Register(Register {
                pattern: UrlPattern::prefix("https://news.example/").expect("valid"),
                articles: 100_000,
                words: 800,
                tier: Tier::Standard,
                uniqueness_bps: 5000,
                partners: List::default(),
                nonce: [0; 16],
            }),
        ),
    ];
    for n in 1..=labs {
        out.extend(lab_setup(n));
    }
    out
}

/// A receipt by lab `n` (whose standard contract it names) for article `article`.
pub fn receipt(lab: &SigningKey, lab_id: u64, article: u64, nonce: [u8; 16]) -> Entry {
    let core = ReceiptCore {
        lab_id,
        contract_id: contract_id(lab_id),
        url: Text::new(format!("https://news.example/articles/{article}")).expect("short"),
        content_sha256: [0x22; 32],
        response_bytes: 20_000 + article % 1000,
        fetch_time_ms: FETCH_TIME_BASE_MS + article,
        usage: Usage::AiTrain,
        nonce,
    };
    Entry::sign(lab, Body::Receipt(Receipt { core, delivery: None })).expect("valid receipt")
}

/// A receipt by lab `n` with a random nonce and article.
pub fn random_receipt(n: u8, rng: &mut impl RngCore) -> Entry {
    let mut nonce = [0u8; 16];
    rng.fill_bytes(&mut nonce);
    receipt(&lab_key(n), u64::from(n), rng.gen_range(0..1_000_000), nonce)
}

/// Verify an entry the tests built themselves.
pub fn verified(entry: Entry) -> VerifiedEntry {
    entry.verify().expect("fixture entries are validly signed")
}

/// [`verified`] for many.
pub fn all_verified(entries: Vec<Entry>) -> Vec<VerifiedEntry> {
    entries.into_iter().map(verified).collect()
}

/// Replay a ledger's whole export and every checkpoint it stored through the auditor, as an
/// outside auditor would, trusting only the origin and the collective's public key. The
/// export is read a page at a time on another thread while the auditor replays the page
/// before, as a client fetching pages over HTTP would.
pub fn audit_ledger(ledger: &tally_ledger::Ledger, key: tally_core::sig::PublicKey) -> tally_audit::Report {
    audit_ledger_with(ledger, key, tally_settlement::MemoryStore::default())
}

/// [`audit_ledger`] with the replayed state kept in `state` (empty), as `tally audit` keeps
/// it in a [`tally_ledger::ScratchState`].
pub fn audit_ledger_with<S: tally_settlement::ApplyWrites>(
    ledger: &tally_ledger::Ledger,
    key: tally_core::sig::PublicKey,
    state: S,
) -> tally_audit::Report {
    const PAGE_ENTRIES: usize = 8192;
    let store = ledger.store().clone();
    let size = ledger.size();
    let notes: Vec<String> =
        store.checkpoints(0, usize::MAX).expect("checkpoints").into_iter().map(|(_, n)| n).collect();
    let origin = ledger.genesis().expect("a genesis").origin;
    let no_tiles: Box<std::collections::HashMap<String, Vec<u8>>> = Box::default();
    let mut auditor =
        tally_audit::Auditor::with_tiles(tally_audit::Pins { origin, key }, notes, Vec::new(), no_tiles, state)
            .expect("empty state opens");
    let (tx, rx) = std::sync::mpsc::sync_channel(2);
    let reader = std::thread::spawn(move || {
        let mut from = 0;
        while from < size {
            let page = store.export(from, size, PAGE_ENTRIES).expect("export");
            from += page.len() as u64;
            if tx.send(page).is_err() {
                break; // the audit stopped early
            }
        }
    });
    'pages: for page in rx {
        for (leaf, entry) in &page {
            if !auditor.push(leaf, entry) {
                break 'pages;
            }
        }
    }
    reader.join().expect("export reader");
    auditor.finish()
}

/// Copy the files of a data directory (not recursive): taken while the ledger is open and
/// idle, the copy is what a crash would leave.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for f in std::fs::read_dir(from).expect("read the directory") {
        let f = f.expect("directory entry");
        std::fs::copy(f.path(), to.join(f.file_name())).expect("copy a file");
    }
}
