//! The fuzz targets' checks (`fuzz/src/lib.rs`) over every input kept in the repository:
//! the seed corpus in `fuzz/corpus/<target>/` and every input that once crashed a target,
//! in `fuzz/regressions/<target>/`. Runs on stable; the fuzzing itself is `scripts/fuzz.sh`.

#[path = "../../fuzz/src/lib.rs"]
mod checks;

fn run(target: &str, check: fn(&[u8])) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(files) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for file in files {
            let path = file.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                panic!("{target}: {} fails its check", path.display());
            }
            inputs += 1;
        }
    }
    assert!(inputs > 0, "{target} has a seed corpus");
}

#[test]
fn every_kept_fuzz_input_passes_its_check() {
    run("entry_decode", checks::entry_decode);
    run("submission_body", checks::submission_body);
    run("checkpoint_note", checks::checkpoint_note);
    run("inclusion_proof", checks::inclusion_proof);
    run("consistency_proof", checks::consistency_proof);
}
