//! The fuzz corpus as regression tests: every seed, every input the campaign kept and every
//! input that once crashed a target (`fuzz/seeds`, `fuzz/corpus`, `fuzz/crashes`, a folder per
//! target) runs through its target here on every test run; a panic fails the test with the
//! file's name. The campaign itself: docs/reliability.md.

use std::path::{Path, PathBuf};

use sdhost::fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `kind/<target>`, in name order.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut count = 0;
    for target in TARGETS {
        for file in inputs(kind, target.name) {
            let data = std::fs::read(&file).expect("readable input");
            let outcome = std::panic::catch_unwind(|| (target.run)(&data));
            assert!(
                outcome.is_ok(),
                "fuzz target {} panicked on {}",
                target.name,
                file.display()
            );
            count += 1;
        }
    }
    count
}

#[test]
fn every_target_has_seeds_and_no_seed_panics() {
    for target in TARGETS {
        assert!(
            !inputs("seeds", target.name).is_empty(),
            "fuzz/seeds/{} is empty (fuzz/make_seeds.py writes it)",
            target.name
        );
    }
    assert!(replay("seeds") >= TARGETS.len());
}

#[test]
fn the_kept_corpus_runs_without_a_panic() {
    replay("corpus");
}

#[test]
fn every_input_that_once_crashed_a_target_is_handled() {
    replay("crashes");
}

#[test]
fn the_corpus_folders_name_only_known_targets() {
    for kind in ["seeds", "corpus", "crashes"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                sdhost::fuzz::find(&name).is_some(),
                "fuzz/{kind}/{name} is not a fuzz target"
            );
        }
    }
}
