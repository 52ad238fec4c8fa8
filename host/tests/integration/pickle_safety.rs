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

/// The bytes of heap and other private writable memory `sdhost info` may use in the bombs
/// test (`RLIMIT_DATA`): a failing start needs a small part of it, and each of the machine's
/// caps keeps a bomb well under it.
const DATA_LIMIT: u64 = 1 << 30;

/// Runs `sdhost info` on `file` under [`DATA_LIMIT`]: whether it exited with status 1 (a
/// clean error, not an abort on a failed allocation), and its stderr.
fn info_under_data_limit(file: &std::path::Path) -> (Option<i32>, String) {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sdhost"));
    command
        .args(["info", "--no-hash"])
        .arg(file)
        .env("SDHOST_CACHE_DIR", file.with_extension("cache"));
    // SAFETY: setrlimit is async-signal-safe and touches nothing of the parent.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: DATA_LIMIT,
                rlim_max: DATA_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn allocation_bombs_stay_within_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    common::run_reference(
        "pickle_corpus.py",
        &["hostile".as_ref(), dir.path().as_os_str()],
    );
    // Uncapped, each bomb would take gigabytes (or, for the length claims, try to reserve
    // exabytes); capped, each is a clean error inside the data limit. The control: a real
    // checkpoint loads under the same limit.
    let model = common::tiny_model(dir.path(), 31);
    let (code, stderr) = info_under_data_limit(&model);
    assert_eq!(
        code,
        Some(0),
        "the limit leaves room for a real start: {stderr}"
    );
    for file in [
        "dict-copies.pt",
        "appends-flood.pt",
        "container-flood.pt",
        "mark-flood.pt",
        "stack-flood.pt",
        "memo-bomb.pt",
        "put-loop.pt",
        "set-copies.pt",
        "deep.pt",
        "huge-long4.pt",
        "huge-unicode8.pt",
        "huge-bytearray8.pt",
        "huge-numel.pt",
        "huge-view.pt",
        "broadcast-bomb.pt",
        "zip-bomb.ckpt",
    ] {
        let (code, stderr) = info_under_data_limit(&dir.path().join(file));
        assert_eq!(code, Some(1), "{file}: {stderr}");
        assert!(stderr.contains(file), "{file}: {stderr}");
        assert!(
            !stderr.contains("memory allocation") && !stderr.contains("panicked"),
            "{file}: {stderr}"
        );
    }
}
