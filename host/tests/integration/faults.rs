//! The fault table of docs/reliability.md: the machine runs out of memory in a job, the disk
//! fills while an image is saved, the loaded model's file is truncated or replaced, a sampler
//! plugin returns garbage; each gives a typed error and the next job runs. (SIGTERM, SIGKILL
//! and a dying client are in `daemon::`, plugin panics in `plugins::`.)

use crate::common;
use crate::daemon::{image_attachment, start_daemon, Client};

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

/// The event that ends job `job` (`done`, `error` or `cancelled`).
fn ending(client: &mut Client, job: u64) -> Value {
    loop {
        let event = client.read().header;
        let kind = event["type"].as_str().unwrap_or_default();
        if event["job"] == json!(job) && matches!(kind, "done" | "error" | "cancelled") {
            return event;
        }
    }
}

/// Queues an img2img job of a `size`×`size` image with `params`; returns its job number.
fn submit(client: &mut Client, size: u32, params: Value) -> u64 {
    let id = client.send(
        json!({"type": "img2img", "params": params}),
        &[image_attachment(size, size)],
    );
    let queued = client.answer(id).header;
    assert_eq!(queued["type"], "queued", "{queued}");
    queued["job"].as_u64().unwrap()
}

/// The process's address space in bytes (`VmSize`).
fn address_space(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

#[test]
fn out_of_memory_in_a_job_is_an_error_event_and_the_next_job_runs() {
    let daemon = start_daemon(&[], None);
    let pid = daemon.child.id();
    // Cap the daemon's address space (`ulimit -v`, as a container's memory limit does) at what
    // it uses now plus 1 GiB: a 2048×2048 job needs more, a 32×32 one much less.
    let cap = address_space(pid) + (1 << 30);
    let limit = libc::rlimit {
        rlim_cur: cap,
        rlim_max: cap,
    };
    // SAFETY: prlimit reads `limit` and writes nothing (null old limit); the pid is our child.
    let set = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_AS,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(set, 0, "prlimit failed");

    let mut client = Client::connected(&daemon.socket);
    let params = json!({"prompt": "a house", "seed": 1, "steps": 2, "denoising_strength": 1.0});
    let big = submit(&mut client, 2048, params.clone());
    let failed = ending(&mut client, big);
    assert_eq!(failed["type"], "error", "{failed}");
    assert_eq!(failed["code"], "out_of_memory", "{failed}");
    let message = failed["message"].as_str().unwrap();
    println!("2048×2048 under a 1 GiB cap: {message}");
    // What users can act on, not libtorch's wrapping and C++ backtrace.
    assert!(message.contains("allocate"), "{message}");
    assert!(
        !message.contains("frame #") && message.len() < 300,
        "{message}"
    );

    let small = submit(&mut client, 32, params);
    let done = ending(&mut client, small);
    assert_eq!(done["type"], "done", "the next job runs: {done}");
}

/// `sdhost img2img` of a tiny model into `out_dir`, with `limit_file_size` as RLIMIT_FSIZE.
fn img2img_into(dir: &Path, out_dir: &Path, limit_file_size: Option<u64>) -> Output {
    let model = common::tiny_model(dir, 31);
    let init = dir.join("init.png");
    image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 99])
    })
    .save(&init)
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sdhost"));
    command
        .args(["img2img", "--steps", "2", "--seed", "5", "--model"])
        .arg(&model)
        .arg("--init-image")
        .arg(&init)
        .arg("--out-dir")
        .arg(out_dir)
        .env("SDHOST_CACHE_DIR", dir.join("cache"));
    if let Some(bytes) = limit_file_size {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec only async-signal-safe calls (signal, setrlimit).
        unsafe {
            command.pre_exec(move || {
                // Writes past the limit then fail with EFBIG instead of killing the process.
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let limit = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    command.output().unwrap()
}

/// Mounts a 64 KiB tmpfs on `dir` and fills it; false where mounting is not permitted.
fn full_tmpfs(dir: &Path) -> bool {
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(dir)
        .output()
        .is_ok_and(|out| out.status.success());
    if mounted {
        use std::io::Write;
        let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
        while filler.write_all(&[7; 4096]).is_ok() {}
    }
    mounted
}

/// Unmounts the tmpfs on `dir` when dropped.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn a_full_disk_is_an_error_and_leaves_no_half_written_image() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    // A full filesystem where root may mount one; else a file-size limit, which fails the
    // write the same way (EFBIG instead of ENOSPC) once the PNG passes 1 KiB.
    let (out, how) = if full_tmpfs(&out_dir) {
        let _unmount = Unmount(&out_dir);
        let out = img2img_into(dir.path(), &out_dir, None);
        let left: Vec<String> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "filler")
            .collect();
        assert!(left.is_empty(), "files left on the full disk: {left:?}");
        (out, "a full 64 KiB tmpfs")
    } else {
        let out = img2img_into(dir.path(), &out_dir, Some(1024));
        let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
        assert!(left.is_empty(), "files left: {left:?}");
        (out, "RLIMIT_FSIZE of 1 KiB (mount not permitted)")
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("img2img onto {how}: {stderr}");
    assert!(!out.status.success(), "saving on a full disk must fail");
    let reason = ["No space left on device", "File too large"]
        .into_iter()
        .find(|reason| stderr.contains(reason))
        .unwrap_or_else(|| panic!("no reason given: {stderr}"));
    assert_eq!(stderr.matches(reason).count(), 1, "said once: {stderr}");
    assert!(stderr.contains("00000-5.png"), "names the file: {stderr}");
}

#[test]
fn a_loaded_model_file_truncated_or_replaced_is_read_again_only_when_selected() {
    let daemon = start_daemon(&[], None);
    let mut client = Client::connected(&daemon.socket);
    let model = daemon.dir.path().join("tiny-31.safetensors");
    let original = std::fs::read(&model).unwrap();
    let loaded_hash = {
        let id = client.send(json!({"type": "select_model", "model": "tiny-31"}), &[]);
        let job = client.answer(id).header["job"].as_u64().unwrap();
        let done = ending(&mut client, job);
        assert_eq!(done["type"], "done", "{done}");
        done["hash"].clone()
    };

    // Truncated while loaded: the weights were copied out of the mapping at load, so jobs
    // still run (no SIGBUS), and selecting the file again is a typed error.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&model)
        .unwrap()
        .set_len(original.len() as u64 / 2)
        .unwrap();
    let job = client.submit(1, 2);
    assert_eq!(ending(&mut client, job)["type"], "done");
    let id = client.send(json!({"type": "select_model", "model": "tiny-31"}), &[]);
    let job = client.answer(id).header["job"].as_u64().unwrap();
    let failed = ending(&mut client, job);
    assert_eq!(failed["code"], "model_load_failed", "{failed}");
    assert!(
        failed["message"].as_str().unwrap().contains("tiny-31"),
        "{failed}"
    );
    println!("truncated model selected: {}", failed["message"]);
    // The model in memory stays loaded and serves the next job.
    let job = client.submit(2, 2);
    assert_eq!(ending(&mut client, job)["type"], "done");

    // Replaced by another model at the same path: selecting it loads the new file.
    let other_dir = daemon.dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = common::tiny_model(&other_dir, 32);
    std::fs::copy(&other, &model).unwrap();
    let id = client.send(json!({"type": "select_model", "model": "tiny-31"}), &[]);
    let job = client.answer(id).header["job"].as_u64().unwrap();
    let done = ending(&mut client, job);
    assert_eq!(done["type"], "done", "{done}");
    assert_ne!(done["hash"], loaded_hash, "the new file's hash: {done}");
    let job = client.submit(3, 2);
    assert_eq!(ending(&mut client, job)["type"], "done");
}

#[test]
fn a_plugin_returning_nan_is_sampler_failed_and_the_next_job_runs() {
    let plugins = crate::plugins::folder_with(&["faulty_sampler"]);
    let config = format!("plugins_dir = {:?}\n", plugins.path());
    let daemon = start_daemon(&[], Some(&config));
    let mut client = Client::connected(&daemon.socket);
    for sampler in ["NotFinite", "Panics", "Fails"] {
        let params = json!({"seed": 1, "steps": 2, "sampler_name": sampler});
        let job = submit(&mut client, 32, params);
        let failed = ending(&mut client, job);
        assert_eq!(failed["code"], "sampler_failed", "{sampler}: {failed}");
        println!("{sampler}: {}", failed["message"]);
    }
    let job = client.submit(1, 2);
    assert_eq!(ending(&mut client, job)["type"], "done");
}
