//! Cross-request batching with the real daemon: queued txt2img jobs that differ only in
//! prompts, seeds and batch size start together and run as one batch, each with the images,
//! seeds and infotext the same jobs get from a daemon that runs them one by one; a job with
//! other settings waits for its own turn.

use serde_json::{json, Value};

use super::{start_daemon, Client};

/// One txt2img job of the test: its prompt, seed, batch size, CFG scale and steps.
fn job(prompt: &str, seed: u64, batch_size: u64, cfg_scale: f64, steps: u64) -> Value {
    json!({"type": "txt2img", "params": {
        "prompt": prompt, "negative_prompt": "blurry", "seed": seed, "batch_size": batch_size,
        "cfg_scale": cfg_scale, "steps": steps, "sampler_name": "Euler a", "width": 64,
        "height": 48,
    }})
}

/// Per job: its images as (seed, infotext, pixels); and the events in order as
/// (job index, kind).
type Run = (Vec<Vec<(u64, String, Vec<u8>)>>, Vec<(usize, String)>);

/// Queues a long first job (index 0) and then `jobs` on one connection of a daemon started
/// with `--joint-batch joint`, and collects what comes back.
fn run(joint: &str, jobs: &[Value]) -> Run {
    let daemon = start_daemon(&["--joint-batch", joint], None);
    let mut client = Client::connected(&daemon.socket);
    // The first job keeps the worker busy while the others queue behind it.
    let mut numbers = Vec::new();
    for request in std::iter::once(job("a long job", 1, 1, 5.0, 40)).chain(jobs.iter().cloned()) {
        let id = client.send(request, &[]);
        let queued = client.answer(id).header;
        assert_eq!(queued["type"], "queued", "{queued}");
        numbers.push(queued["job"].as_u64().unwrap());
    }
    let mut images = vec![Vec::new(); numbers.len()];
    let mut order = Vec::new();
    let mut ended = 0;
    while ended < numbers.len() {
        let frame = client.read();
        let header = &frame.header;
        let Some(index) = numbers.iter().position(|n| header["job"] == json!(n)) else {
            continue;
        };
        let kind = header["type"].as_str().unwrap().to_string();
        match kind.as_str() {
            "result" => images[index].push((
                header["seed"].as_u64().unwrap(),
                header["infotext"].as_str().unwrap().to_string(),
                frame.attachments[0].1.clone(),
            )),
            "done" => ended += 1,
            "error" | "cancelled" => panic!("job {index}: {header}"),
            _ => {}
        }
        order.push((index, kind));
    }
    (images, order)
}

/// Where the first event of `kind` of job `index` came.
fn position(order: &[(usize, String)], index: usize, kind: &str) -> usize {
    order
        .iter()
        .position(|(i, k)| *i == index && k == kind)
        .unwrap_or_else(|| panic!("no {kind} for job {index}"))
}

#[test]
fn queued_jobs_that_differ_in_prompts_and_seeds_run_as_one_batch() {
    let jobs = [
        job("a house", 5, 2, 7.0, 3),
        job("a boat AND a sail :0.5", 90, 1, 7.0, 3),
        job(&["lighthouse"; 90].join(" "), 7, 1, 7.0, 3),
        // Another CFG scale: its own turn, after the batch.
        job("a tree", 3, 1, 4.0, 3),
    ];
    let (joint, order) = run("4", &jobs);
    let (alone, alone_order) = run("1", &jobs);
    // Jobs 1-3 start together, before any of them steps; job 4 after they are done.
    let started = |i| position(&order, i, "started");
    assert!(started(3) < position(&order, 1, "progress"), "{order:?}");
    assert!(started(4) > position(&order, 3, "done"), "{order:?}");
    assert!(position(&alone_order, 2, "started") > position(&alone_order, 1, "done"));
    for (index, (ours, theirs)) in joint.iter().zip(&alone).enumerate() {
        assert_eq!(ours.len(), theirs.len(), "job {index}");
        for ((seed, infotext, pixels), (seed2, infotext2, pixels2)) in ours.iter().zip(theirs) {
            assert_eq!((seed, infotext), (seed2, infotext2), "job {index}");
            let worst = pixels
                .iter()
                .zip(pixels2)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(worst <= 1, "job {index}: pixels differ by {worst}");
        }
    }
    assert_eq!(joint[1].len(), 2);
    assert_eq!(
        joint[1][1].0, 6,
        "the second image's seed is the job's seed + 1"
    );
}

#[test]
fn a_job_cancelled_in_a_joint_batch_ends_at_once_and_the_others_go_on() {
    let daemon = start_daemon(&["--joint-batch", "8"], None);
    let mut client = Client::connected(&daemon.socket);
    let requests = [
        job("a long job", 1, 1, 5.0, 40),
        job("a house", 5, 1, 7.0, 30),
        job("a boat", 6, 2, 7.0, 30),
        job("a tree", 7, 1, 7.0, 30),
    ];
    let mut numbers = Vec::new();
    for request in requests {
        let id = client.send(request, &[]);
        numbers.push(client.answer(id).header["job"].as_u64().unwrap());
    }
    let mut order = Vec::new();
    let mut results = [0; 4];
    let ended = |order: &[(usize, String)]| {
        order
            .iter()
            .filter(|(_, k)| k == "done" || k == "cancelled")
            .count()
    };
    while ended(&order) < numbers.len() {
        let header = client.read().header;
        let Some(index) = numbers.iter().position(|n| header["job"] == json!(n)) else {
            continue;
        };
        let kind = header["type"].as_str().unwrap().to_string();
        if kind == "progress" && index == 2 && header["step"] == json!(2) {
            client.send(json!({"type": "cancel", "job": numbers[2]}), &[]);
        }
        if kind == "result" {
            results[index] += 1;
            continue;
        }
        assert!(kind != "error", "{header}");
        order.push((index, kind));
    }
    let at = |index, kind| position(&order, index, kind);
    assert!(at(2, "cancelled") < at(1, "done") && at(2, "cancelled") < at(3, "done"));
    // The others stepped on after the cancel.
    assert!(order[at(2, "cancelled")..]
        .iter()
        .any(|(i, k)| *i == 1 && k == "progress"));
    assert_eq!(results, [1, 1, 0, 1]);
    assert!(!order.iter().any(|(i, k)| *i == 2 && k == "done"));
}
