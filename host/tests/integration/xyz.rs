//! The X/Y/Z plot: its value syntax against a transcription of A1111's `process_axis`
//! (tests/reference/xyz_values_reference.py), each cell pixel-identical to the single job with
//! that cell's values (CLI img2img and txt2img, and the HTTP API), the grid's infotext and
//! files, and bad axes refused before any sampling.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{json, Value};

use crate::cli::{assert_success, pixels, run_sdhost};
use crate::common;
use sdhost::pipeline::png_info::read_png_infotext;
use sdhost::scripts::xyz::values::{csv_values, expand, AxisValue, ValueKind};

/// Value texts of every form §11.2 and A1111's own code give, with its quirks.
const CASES: &[(&str, &str)] = &[
    ("int", "1-5"),
    ("int", "1-10 (+3)"),
    ("int", "10-1 (-3)"),
    ("int", "1-10 [4]"),
    ("int", "1-3 [5]"),
    ("int", "10, 20,30"),
    ("int", "-5--1"),
    ("int", "5-1"),
    ("int", "1-5 (+0)"),
    ("int", "1 - 5 ( +2 )"),
    ("int", "+3, 1_0"),
    ("int", "5.0"),
    ("int", "1-2-3"),
    ("int", "0-10 [0]"),
    ("int", ""),
    ("int", "-1"),
    ("int", "1-4 (+1), 7"),
    ("int", "-3-3 [4]"),
    ("int", "a,"),
    ("float", "0.3-0.7 [5]"),
    ("float", "5-9 (+2)"),
    ("float", "0-0.3 (+0.1)"),
    ("float", "1-2 (+0.25)"),
    ("float", "0.1,0.2"),
    ("float", "1e-5"),
    ("float", "7"),
    ("float", "1.5-0.5 (-0.5)"),
    ("float", "0-1 [3]"),
    ("float", "0.25-1 [2.5]"),
    ("float", "inf"),
    ("float", "-0.5-0.5 (+0.1)"),
    ("float", "0.7-0.3 [5]"),
    ("float", "1-1 [3]"),
    ("float", "2-4"),
    ("float", "1.5x2-3"),
    ("float", "0-1 (+0)"),
    ("float", "3.-4. (+.5)"),
    ("str", "a, \"b, c\" ,d"),
    ("str", "\"say \"\"hi\"\"\""),
    ("str", "x,"),
    ("str", "cat,dog\n bird"),
    ("str", " \"q\"x , y"),
    ("str", "a,,b"),
    ("permutations", "a, b, c"),
];

fn kind(name: &str) -> ValueKind {
    match name {
        "int" => ValueKind::Int,
        "float" => ValueKind::Float,
        "str" => ValueKind::Str,
        _ => ValueKind::Permutations,
    }
}

fn encode(value: &AxisValue) -> Value {
    match value {
        AxisValue::Int(i) => json!({ "int": i }),
        AxisValue::Float(f) => json!({ "float_bits": f.to_bits() }),
        AxisValue::Str(s) => json!({ "str": s }),
        AxisValue::Order(tokens) => json!({ "order": tokens }),
    }
}

#[test]
fn value_syntax_matches_a1111s_process_axis() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<Value> = CASES
        .iter()
        .map(|(kind, text)| json!({"kind": kind, "text": text}))
        .collect();
    let input = dir.path().join("cases.json");
    let output = dir.path().join("values.json");
    std::fs::write(&input, serde_json::to_vec(&cases).unwrap()).unwrap();
    common::run_reference(
        "xyz_values_reference.py",
        &[input.as_os_str(), output.as_os_str()],
    );
    let expected: Vec<Value> = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    for ((name, text), want) in CASES.iter().zip(&expected) {
        let got = expand(kind(name), &csv_values(text));
        match (&got, want.get("values")) {
            (Ok(values), Some(want)) => {
                let values: Vec<Value> = values.iter().map(encode).collect();
                assert_eq!(&Value::from(values), want, "{name} {text:?}");
            }
            (Err(_), None) => {}
            _ => panic!("{name} {text:?}: sdhost {got:?}, A1111 {want}"),
        }
    }
}

/// A folder with a tiny model and a 40x36 init picture.
struct Fixture {
    dir: tempfile::TempDir,
    model: PathBuf,
    init: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), 7);
    let init = dir.path().join("init.png");
    image::RgbImage::from_fn(40, 36, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 7) as u8, 120])
    })
    .save(&init)
    .unwrap();
    Fixture { dir, model, init }
}

/// `sdhost <command>` on the fixture's model into `out` with `extra` flags.
fn generate(fx: &Fixture, command: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        command.as_ref(),
        "--model".as_ref(),
        fx.model.as_os_str(),
        "--out-dir".as_ref(),
        out.as_os_str(),
        "--threads".as_ref(),
        "1".as_ref(),
    ];
    if command == "img2img" {
        args.extend(["--init-image".as_ref(), fx.init.as_os_str()]);
    }
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    run_sdhost(&args)
}

/// The PNGs of `dir`, by name.
fn pngs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "png"));
    files.sort();
    files
}

fn infotext(path: &Path) -> String {
    read_png_infotext(path)
        .unwrap()
        .expect("the PNG has parameters")
}

#[test]
fn img2img_cells_are_the_single_jobs_and_the_grid_says_what_it_plots() {
    let fx = fixture();
    let (out, grids) = (fx.dir.path().join("out"), fx.dir.path().join("grids"));
    let base = [
        "--prompt",
        "a red barn",
        "--seed",
        "5",
        "--sampler-name",
        "Euler",
        "--denoising-strength",
        "0.8",
    ];
    let mut plot: Vec<&str> = base.to_vec();
    plot.extend([
        "--x-axis",
        "Steps: 2,3",
        "--y-axis",
        "CFG Scale: 5-9 (+4)",
        "--grid-dir",
        grids.to_str().unwrap(),
    ]);
    let done = generate(&fx, "img2img", &out, &plot);
    assert_success(&done);
    let cells = pngs(&out);
    assert_eq!(cells.len(), 4, "{cells:?}");
    let grid_files = pngs(&grids);
    assert_eq!(grid_files.len(), 1);
    assert_eq!(grid_files[0].file_name().unwrap(), "xyz_grid-0000.png");

    // Cells run Z, Y, X from the outside in when no axis costs more: (2, 5), (3, 5), (2, 9), (3, 9).
    let values = [("2", "5"), ("3", "5"), ("2", "9"), ("3", "9")];
    for (i, (cell, (steps, cfg))) in cells.iter().zip(values).enumerate() {
        let single_out = fx.dir.path().join(format!("single{i}"));
        let mut single: Vec<&str> = base.to_vec();
        single.extend(["--steps", steps, "--cfg-scale", cfg]);
        assert_success(&generate(&fx, "img2img", &single_out, &single));
        let single = &pngs(&single_out)[0];
        assert_eq!(
            pixels(cell),
            pixels(single),
            "cell {i}: steps {steps}, CFG {cfg}"
        );
        assert_eq!(infotext(cell), infotext(single), "cell {i}'s infotext");
    }

    let grid = infotext(&grid_files[0]);
    let first = infotext(&cells[0]);
    for key in [
        "Script: X/Y/Z plot",
        "X Type: Steps",
        "X Values: \"2,3\"",
        "Y Type: CFG Scale",
        "Y Values: 5-9 (+4)",
        "Steps: 2",
        "Seed: 5",
    ] {
        assert!(grid.contains(key), "{key} missing from {grid}");
    }
    assert!(!grid.contains("Z Type"), "no Z axis: {grid}");
    assert!(grid.starts_with(first.lines().next().unwrap()));
    let picture = pixels(&grid_files[0]);
    // Two 40x32 columns after a 30 px label strip; two rows under the X labels.
    assert_eq!(picture.width(), 30 + 2 * 40);
    assert!(picture.height() > 2 * 32);
}

#[test]
fn extra_noise_axis_cells_are_the_single_jobs_with_a1111s_option() {
    let fx = fixture();
    let out = fx.dir.path().join("extra-out");
    let base = [
        "--prompt",
        "a barn",
        "--seed",
        "9",
        "--steps",
        "2",
        "--sampler-name",
        "Euler",
    ];
    let mut plot: Vec<&str> = base.to_vec();
    let grids = fx.dir.path().join("extra-grids");
    plot.extend([
        "--x-axis",
        "Extra noise: 0,0.4",
        "--grid-dir",
        grids.to_str().unwrap(),
    ]);
    assert_success(&generate(&fx, "img2img", &out, &plot));
    let cells = pngs(&out);
    assert_eq!(cells.len(), 2, "{cells:?}");
    assert_ne!(
        pixels(&cells[0]),
        pixels(&cells[1]),
        "the extra noise changes the picture"
    );
    assert!(!infotext(&cells[0]).contains("Extra noise"));
    assert!(
        infotext(&cells[1]).contains("Extra noise: 0.4"),
        "{}",
        infotext(&cells[1])
    );
    let single_out = fx.dir.path().join("extra-single");
    let mut single: Vec<&str> = base.to_vec();
    single.extend(["--img2img-extra-noise", "0.4"]);
    assert_success(&generate(&fx, "img2img", &single_out, &single));
    let single = &pngs(&single_out)[0];
    assert_eq!(pixels(&cells[1]), pixels(single));
    assert_eq!(infotext(&cells[1]), infotext(single));
}

#[test]
fn txt2img_z_axis_sub_grids_hires_steps_and_fixed_seeds() {
    let fx = fixture();
    let (out, grids) = (fx.dir.path().join("out"), fx.dir.path().join("grids"));
    let base = [
        "--prompt",
        "a boat",
        "--steps",
        "2",
        "--width",
        "32",
        "--height",
        "32",
        "--sampler-name",
        "Euler a",
        "--enable-hr",
        "true",
        "--hr-scale",
        "1.5",
        "--denoising-strength",
        "0.5",
    ];
    let mut plot: Vec<&str> = base.to_vec();
    plot.extend([
        "--x-axis",
        "Seed: 10, 11",
        "--z-axis",
        "Hires steps: 1,2",
        "--include-sub-grids",
        "--grid-dir",
        grids.to_str().unwrap(),
    ]);
    assert_success(&generate(&fx, "txt2img", &out, &plot));
    let cells = pngs(&out);
    assert_eq!(cells.len(), 4);
    let grid_files = pngs(&grids);
    assert_eq!(grid_files.len(), 3, "the plot and one grid per Z value");
    // Z outermost: (10, 1), (11, 1), (10, 2), (11, 2); the last one alone:
    let single_out = fx.dir.path().join("single");
    let mut single: Vec<&str> = base.to_vec();
    single.extend(["--seed", "11", "--hr-second-pass-steps", "2"]);
    assert_success(&generate(&fx, "txt2img", &single_out, &single));
    assert_eq!(pixels(&cells[3]), pixels(&pngs(&single_out)[0]));
    let main = infotext(&grid_files[0]);
    for key in [
        "X Type: Seed",
        "Fixed X Values: \"10, 11\"",
        "Z Type: Hires steps",
        "Z Values: \"1,2\"",
    ] {
        assert!(main.contains(key), "{key} missing from {main}");
    }
    let sub = infotext(&grid_files[2]);
    assert!(
        sub.contains("X Type: Seed") && !sub.contains("Z Type"),
        "{sub}"
    );
    assert!(
        sub.contains("Hires steps: 2"),
        "the second Z value's grid: {sub}"
    );
}

#[test]
fn bad_axes_are_refused_before_any_sampling() {
    let fx = fixture();
    let out = fx.dir.path().join("out");
    for (axis, mentions) in [
        ("Stepz: 1,2", "no axis \"Stepz\""),
        ("Steps: 1-x", "X values of \"Steps\""),
        ("Steps: 0, 2", "steps must be at least 1"),
        ("Sampler: Euler, Nope", "Unknown sampler: Nope"),
        ("Face restore: true", "sdhost does not do"),
        ("Prompt S/R: zebra, cat", "did not find zebra"),
        ("Checkpoint name: missing", "Unknown checkpoint: missing"),
        ("CFG Scale: nan", "cfg_scale"),
        (
            "Hires steps: 1",
            "no axis \"Hires steps\" on the img2img tab",
        ),
    ] {
        let output = generate(
            &fx,
            "img2img",
            &out,
            &["--prompt", "a cat", "--x-axis", axis],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{axis}: succeeded");
        assert!(!stderr.contains("panicked"), "{axis}: {stderr}");
        assert!(stderr.contains(mentions), "{axis}: {stderr}");
        assert!(pngs(&out).is_empty(), "{axis}: something was sampled");
    }
}

#[test]
fn api_script_args_run_the_plot_and_return_the_grid_first() {
    use crate::api::{decode_png, init_picture, post, start};
    let server = start(&[], None);
    let dir = tempfile::tempdir().unwrap();
    let (_, init) = init_picture(dir.path());
    let request = |script: Option<(&str, Value)>, steps: u32| {
        let mut body = json!({
            "init_images": [init], "prompt": "a red barn", "seed": 5, "steps": steps,
            "sampler_name": "Euler", "denoising_strength": 0.8, "width": 40, "height": 32,
        });
        if let Some((name, args)) = script {
            body["script_name"] = json!(name);
            body["script_args"] = args;
        }
        body
    };
    // A1111's positional arguments: X = Steps (index 4 on the img2img tab), values "2,3",
    // no Y or Z, legend on, Include Sub Images on.
    let args = json!([
        4,
        "2,3",
        [],
        0,
        "",
        [],
        0,
        "",
        [],
        true,
        true,
        false,
        false,
        false,
        false,
        false,
        0,
        false
    ]);
    let (status, answer) = post(
        &server,
        "/sdapi/v1/img2img",
        &request(Some(("x/y/z PLOT", args)), 9),
    );
    assert_eq!(status, 200, "{answer}");
    let images = answer["images"].as_array().unwrap();
    assert_eq!(images.len(), 3, "the grid, then the two cells");
    let (grid, grid_text) = decode_png(images[0].as_str().unwrap());
    // Two 40x32 cells under their X labels; no Y axis, so no label strip on the left.
    assert!(
        grid.width() == 2 * 40 && grid.height() > 32,
        "{:?}",
        grid.dimensions()
    );
    let grid_text = grid_text.unwrap();
    assert!(
        grid_text.contains("Script: X/Y/Z plot, X Type: Steps, X Values: \"2,3\""),
        "{grid_text}"
    );
    let info: Value = serde_json::from_str(answer["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["index_of_first_image"], 1);
    assert_eq!(info["infotexts"][0], json!(grid_text));

    // The Steps 3 cell is the job with 3 steps.
    let (status, single) = post(&server, "/sdapi/v1/img2img", &request(None, 3));
    assert_eq!(status, 200, "{single}");
    let cell = decode_png(images[2].as_str().unwrap());
    let alone = decode_png(single["images"][0].as_str().unwrap());
    assert_eq!(cell.0, alone.0, "pixels");
    assert_eq!(cell.1, alone.1, "infotext");

    // Unknown scripts and arguments that do not fit are refused before anything runs.
    let (status, answer) = post(
        &server,
        "/sdapi/v1/img2img",
        &request(Some(("Loopback 9000", json!([]))), 3),
    );
    assert_eq!(status, 422);
    assert_eq!(answer["detail"], "Script 'Loopback 9000' not found");
    let (status, answer) = post(
        &server,
        "/sdapi/v1/txt2img",
        &request(Some(("X/Y/Z plot", json!([99, "1"]))), 3),
    );
    assert_eq!(status, 422, "{answer}");
    // A value the axis cannot take: the worker refuses the plot before sampling.
    let args = json!([4, "2,x", [], 0, "", [], 0, "", []]);
    let (status, answer) = post(
        &server,
        "/sdapi/v1/img2img",
        &request(Some(("X/Y/Z plot", args)), 3),
    );
    assert_eq!(status, 500, "{answer}");
    assert!(
        answer.to_string().contains("\\\"x\\\" is not an integer"),
        "{answer}"
    );
}

/// The headers of socket job `job` up to its end.
fn job_headers(client: &mut crate::daemon::Client, job: &Value) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let frame = client.read();
        if frame.header["job"] != *job {
            continue;
        }
        let kind = frame.header["type"].as_str().unwrap().to_string();
        events.push(frame.header);
        if matches!(kind.as_str(), "done" | "cancelled" | "error") {
            return events;
        }
    }
}

#[test]
fn socket_plot_counts_progress_over_cells_sends_the_grid_last_and_cancels_between_steps() {
    use crate::daemon::{image_attachment, start_daemon, Client};
    let daemon = start_daemon(&[], None);
    let mut client = Client::connected(&daemon.socket);
    let plot = |steps: &str| {
        json!({"type": "img2img", "params": {
            "prompt": "a house", "seed": 3, "sampler_name": "Euler", "denoising_strength": 1.0,
        }, "script_name": "X/Y/Z plot", "script_args": [4, steps, [], 1, "1,2", []]})
    };
    let id = client.send(plot("2,3"), &[image_attachment(32, 32)]);
    let queued = client.answer(id).header;
    assert_eq!(queued["type"], "queued", "{queued}");
    let job = queued["job"].clone();
    let events = job_headers(&mut client, &job);
    let progress: Vec<&Value> = events.iter().filter(|e| e["type"] == "progress").collect();
    // Two seeds × (2 + 3 steps): one plan of every cell's steps, counted on over the cells.
    assert_eq!(progress[0]["total"], 10, "{:?}", progress[0]);
    assert_eq!(progress[0]["images"], 4);
    assert_eq!(progress.last().unwrap()["step"], 10);
    let results: Vec<&Value> = events.iter().filter(|e| e["type"] == "result").collect();
    assert_eq!(results.len(), 5);
    assert!(results[..4].iter().all(|r| r.get("grid").is_none()));
    assert_eq!(results[4]["grid"], true);
    assert!(results[4]["infotext"]
        .as_str()
        .unwrap()
        .contains("Y Type: Seed"));
    assert_eq!(events.last().unwrap()["type"], "done");
    assert_eq!(events.last().unwrap()["images"], 4);

    // Each cell's image names its cell as the legend does, X then Y (Z, "Nothing", left
    // out), whatever order the cells ran in; the grid names none.
    let mut cells = Vec::new();
    for result in &results[..4] {
        let cell = result["cell"]
            .as_array()
            .expect("a cell's image has `cell`");
        let axes: Vec<&Value> = cell.iter().map(|axis| &axis["axis"]).collect();
        assert_eq!(axes, [&json!("Steps"), &json!("Seed")], "{result}");
        let (steps, seed) = (cell[0]["value"].as_str(), cell[1]["value"].as_str());
        let (steps, seed) = (steps.unwrap().to_string(), seed.unwrap().to_string());
        let infotext = result["infotext"].as_str().unwrap();
        assert!(infotext.contains(&format!("Steps: {steps},")), "{result}");
        assert_eq!(result["seed"].to_string(), seed, "{result}");
        cells.push((steps, seed));
    }
    cells.sort();
    let every: Vec<(String, String)> = [("2", "1"), ("2", "2"), ("3", "1"), ("3", "2")]
        .map(|(x, y)| (x.to_string(), y.to_string()))
        .into();
    assert_eq!(cells, every);
    assert!(results[4].get("cell").is_none(), "{}", results[4]);
    // An ordinary job's image names no cell.
    let ordinary = json!(client.submit(5, 2));
    let events = job_headers(&mut client, &ordinary);
    let result = events.iter().find(|e| e["type"] == "result").unwrap();
    assert!(result.get("cell").is_none(), "{result}");

    // Cancelled after its first cell: no further cell runs, the grid still comes.
    let id = client.send(plot("40,40"), &[image_attachment(32, 32)]);
    let job = client.answer(id).header["job"].clone();
    let mut kinds = Vec::new();
    loop {
        let frame = client.read();
        if frame.header["job"] != job {
            continue;
        }
        let kind = frame.header["type"].as_str().unwrap().to_string();
        if kind == "result" && kinds.iter().all(|k| k != "result") {
            client.send(json!({"type": "cancel", "job": job}), &[]);
        }
        kinds.push(kind.clone());
        if matches!(kind.as_str(), "done" | "cancelled" | "error") {
            break;
        }
    }
    assert_eq!(kinds.last().unwrap(), "cancelled", "{kinds:?}");
    let results = kinds.iter().filter(|k| *k == "result").count();
    assert!(
        (2..=3).contains(&results),
        "one or two cells and the grid: {kinds:?}"
    );
}

/// A Checkpoint name axis: the costliest axis runs outermost (each checkpoint loaded once, its
/// cells together), and each cell is the single job on that checkpoint.
#[test]
fn checkpoint_axis_cells_are_the_single_jobs_on_each_checkpoint() {
    let fx = fixture();
    let other = common::tiny_model(fx.dir.path(), 8);
    let (out, grids) = (fx.dir.path().join("out"), fx.dir.path().join("grids"));
    let models = format!(
        "Checkpoint name: {}, {}",
        fx.model.display(),
        other.display()
    );
    let base = [
        "--prompt",
        "a red barn",
        "--seed",
        "5",
        "--sampler-name",
        "Euler",
    ];
    let mut plot: Vec<&str> = base.to_vec();
    plot.extend([
        "--x-axis",
        &models,
        "--y-axis",
        "Steps: 2,3",
        "--grid-dir",
        grids.to_str().unwrap(),
    ]);
    assert_success(&generate(&fx, "img2img", &out, &plot));
    let cells = pngs(&out);
    assert_eq!(cells.len(), 4, "{cells:?}");
    let grid_text = infotext(&pngs(&grids)[0]);
    assert!(grid_text.contains("X Type: Checkpoint name"), "{grid_text}");
    // X (cost 1.0) outside Y: (first, 2), (first, 3), (second, 2), (second, 3).
    let order = [
        (&fx.model, "2"),
        (&fx.model, "3"),
        (&other, "2"),
        (&other, "3"),
    ];
    for (i, (cell, (model, steps))) in cells.iter().zip(order).enumerate() {
        let single_out = fx.dir.path().join(format!("single{i}"));
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "img2img".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--out-dir".as_ref(),
            single_out.as_os_str(),
            "--threads".as_ref(),
            "1".as_ref(),
            "--init-image".as_ref(),
            fx.init.as_os_str(),
        ];
        args.extend(base.iter().map(std::ffi::OsStr::new));
        args.extend(["--steps".as_ref(), std::ffi::OsStr::new(steps)]);
        assert_success(&run_sdhost(&args));
        let single = pngs(&single_out).remove(0);
        assert_eq!(pixels(cell), pixels(&single), "cell {i}");
        let stem = model.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            infotext(cell).contains(&format!("Model: {stem}")),
            "cell {i}: {}",
            infotext(cell)
        );
    }
}

#[test]
fn token_merging_axis_cells_are_the_single_jobs_with_the_ratio() {
    let fx = fixture();
    let out = fx.dir.path().join("tome-out");
    let base = [
        "--prompt",
        "a barn",
        "--seed",
        "9",
        "--steps",
        "2",
        "--sampler-name",
        "Euler",
        "--width",
        "128",
        "--height",
        "128",
    ];
    let mut plot: Vec<&str> = base.to_vec();
    let grids = fx.dir.path().join("tome-grids");
    plot.extend([
        "--x-axis",
        "Token merging ratio: 0,0.5",
        "--grid-dir",
        grids.to_str().unwrap(),
    ]);
    assert_success(&generate(&fx, "img2img", &out, &plot));
    let cells = pngs(&out);
    assert_eq!(cells.len(), 2, "{cells:?}");
    assert_ne!(
        pixels(&cells[0]),
        pixels(&cells[1]),
        "merging changes the picture"
    );
    assert!(!infotext(&cells[0]).contains("Token merging ratio"));
    assert!(
        infotext(&cells[1]).contains("Token merging ratio: 0.5"),
        "{}",
        infotext(&cells[1])
    );
    let single_out = fx.dir.path().join("tome-single");
    let mut single: Vec<&str> = base.to_vec();
    single.extend(["--token-merging-ratio", "0.5"]);
    assert_success(&generate(&fx, "img2img", &single_out, &single));
    let single = &pngs(&single_out)[0];
    assert_eq!(pixels(&cells[1]), pixels(single));
    assert_eq!(infotext(&cells[1]), infotext(single));
}
