//! The restricted unpickler against hostile and malformed files: every payload of the corpus
//! (tests/reference/pickle_corpus.py) is refused with an error naming what was refused, none
//! ever runs, and broken files give clean errors, never a panic or a huge allocation.

use crate::common;
use sdhost::checkpoint::Checkpoint;
use sdhost::pickle::{load_state_dict, PickleError, TorchFile};
use sdhost::weights::LoadError;
use std::collections::BTreeMap;

#[test]
fn hostile_and_malformed_pickles_are_refused_and_never_run() {
    let dir = tempfile::tempdir().unwrap();
    common::run_reference(
        "pickle_corpus.py",
        &["hostile".as_ref(), dir.path().as_os_str()],
    );
    let manifest: BTreeMap<String, Vec<String>> =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert!(manifest.len() >= 40, "corpus of {}", manifest.len());
    for (file, words) in &manifest {
        let path = dir.path().join(file);
        let outcome = std::panic::catch_unwind(|| load_state_dict(&path).map(drop));
        let err = outcome
            .unwrap_or_else(|_| panic!("{file}: panicked"))
            .err()
            .unwrap_or_else(|| panic!("{file}: accepted"));
        let text = err.to_string();
        assert!(text.contains(file.as_str()), "{file}: {text}");
        for word in words {
            assert!(
                text.contains(word.as_str()),
                "{file}: `{word}` not in: {text}"
            );
        }
        if words.first().is_some_and(|w| w == "refused") {
            assert!(
                matches!(
                    err,
                    PickleError::RefusedGlobal { .. } | PickleError::Refused { .. }
                ),
                "{file}: {err:?}"
            );
            // The raw reader (embeddings, hypernetworks) refuses them just the same.
            assert!(TorchFile::open(&path).is_err(), "{file}");
        }
        // A checkpoint path surfaces the same error as a load error.
        if file.ends_with(".ckpt") {
            let err = Checkpoint::open(&path).err().expect(file);
            assert!(matches!(err, LoadError::Pickle(_)), "{file}: {err}");
        }
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n == "CONTROL"),
        "the control payload ran under Python's unpickler, so the corpus is live"
    );
    let ran: Vec<&String> = names.iter().filter(|n| n.starts_with("PWNED")).collect();
    assert!(ran.is_empty(), "payloads ran: {ran:?}");
}

#[test]
fn a_torch_file_truncated_anywhere_gives_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), 31);
    common::run_reference(
        "pickle_corpus.py",
        &[
            "convert".as_ref(),
            model.as_os_str(),
            dir.path().as_os_str(),
        ],
    );
    for name in ["zip.ckpt", "legacy.ckpt"] {
        let bytes = std::fs::read(dir.path().join(name)).unwrap();
        let cut = dir.path().join(format!("cut-{name}"));
        for len in [1, 2, 11, 64, 300, 5000, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&cut, &bytes[..len]).unwrap();
            let outcome = std::panic::catch_unwind(|| load_state_dict(&cut).map(drop));
            let err = outcome
                .unwrap_or_else(|_| panic!("{name} cut at {len}: panicked"))
                .err()
                .unwrap_or_else(|| panic!("{name} cut at {len}: accepted"));
            assert!(
                matches!(
                    err,
                    PickleError::Truncated { .. }
                        | PickleError::Malformed { .. }
                        | PickleError::NotTorchFile { .. }
                ),
                "{name} cut at {len}: {err}"
            );
        }
    }
}
