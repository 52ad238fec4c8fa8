//! A1111 hypernetworks (`<hypernet:NAME:multiplier>`): files written in A1111's format by
//! tests/reference/hypernetwork_reference.py, loaded here and compared with that script's
//! transcription of A1111's `HypernetworkModule` and attention hook: each module, the tiny
//! UNet with hypernetworks chained, and a whole img2img job; then what happens to files that
//! are missing, broken or hostile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common;

use sdhost::extra_networks::dirs::NetworkDirs;
use sdhost::extra_networks::hypernetwork::{load_hypernetwork, HypernetworkError};
use sdhost::extra_networks::parse_prompt;
use sdhost::pickle::PickleError;
use sdhost::pipeline::img2img::{run_img2img, run_img2img_unobserved, JobOutcome};
use sdhost::pipeline::model::GenerationModel;
use sdhost::pipeline::stop::JobStop;
use sdhost::request::GenerationRequest;
use sdhost::sampling::plan::SamplerSettings;
use sdhost_plugin_api::Flow;
use tch::{Device, Kind, Tensor};

/// The multiplier the module comparison runs at.
const MODULE_MULTIPLIER: f64 = 0.8;

/// What the fixture script wrote: good files with their widths, and broken ones.
struct Fixtures {
    _dir: tempfile::TempDir,
    root: PathBuf,
    good: BTreeMap<String, Vec<i64>>,
    broken: Vec<String>,
}

impl Fixtures {
    fn make() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("hypernetworks");
        common::run_reference(
            "hypernetwork_reference.py",
            &["make".as_ref(), root.as_os_str()],
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("manifest.json")).unwrap()).unwrap();
        let good = manifest["good"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, widths)| {
                let widths = widths
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| w.as_i64().unwrap())
                    .collect();
                (name.clone(), widths)
            })
            .collect();
        let broken = manifest["broken"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect();
        Self {
            _dir: dir,
            root,
            good,
            broken,
        }
    }

    /// The file of `name`, in the root or a subfolder.
    fn path(&self, name: &str) -> PathBuf {
        ["", "activations", "broken"]
            .iter()
            .map(|sub| self.root.join(sub).join(format!("{name}.pt")))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no fixture {name}"))
    }
}

fn with_hypernetworks(model: GenerationModel, dir: &Path) -> GenerationModel {
    model.with_network_dirs(NetworkDirs {
        hypernetworks: vec![dir.to_path_buf()],
        ..NetworkDirs::default()
    })
}

#[test]
fn every_layout_and_activation_computes_what_a1111s_module_computes() {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let fixtures = Fixtures::make();
    let reference = fixtures.root.join("modules.safetensors");
    common::run_reference(
        "hypernetwork_reference.py",
        &[
            "modules".as_ref(),
            fixtures.root.as_os_str(),
            MODULE_MULTIPLIER.to_string().as_ref(),
            reference.as_os_str(),
        ],
    );
    let r = common::read_tensors(&reference);
    let mut compared = 0;
    for (name, widths) in &fixtures.good {
        let network = load_hypernetwork(&fixtures.path(name), Kind::Float, Device::Cpu)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&network.widths(), widths, "{name}");
        for width in widths.iter().filter(|&&w| w == 32 || w == 64) {
            let (k, v) = network.modules(*width).unwrap();
            let x = &r[&format!("x.{width}")];
            for (module, which) in [(k, "k"), (v, "v")] {
                let expected = &r[&format!("{name}.{width}.{which}")];
                let actual = module.forward(x, MODULE_MULTIPLIER);
                common::assert_close(&format!("{name}.{width}.{which}"), &actual, expected, 1e-5);
                compared += 1;
            }
        }
    }
    // Every activation A1111 can run, and the layouts: 27 activation files and 8 others.
    assert!(compared >= 2 * (27 + 8), "only {compared} modules compared");
    // Dropout and activation layers take Sequential indices: the layouts the keys map to.
    let length = |name: &str| {
        load_hypernetwork(&fixtures.path(name), Kind::Float, Device::Cpu)
            .unwrap()
            .modules(32)
            .unwrap()
            .0
            .len()
    };
    assert_eq!(length("defaults"), 2); // Linear, Linear
    assert_eq!(length("swish_deep"), 11); // (Linear, Hardswish, LayerNorm, Dropout) ×2, + 3
    assert_eq!(length("mish_dropout"), 7); // (Linear, Mish, Dropout) ×2, Linear
    assert_eq!(length("single"), 3); // Linear, Tanh (activate_output's default), Dropout
    assert_eq!(length("linear_ln"), 4); // "linear" adds no layer
}

#[test]
fn broken_and_hostile_files_are_refused_with_a_clear_error() {
    let fixtures = Fixtures::make();
    assert_eq!(fixtures.broken.len(), 10);
    for name in &fixtures.broken {
        let path = fixtures.path(name);
        let error = load_hypernetwork(&path, Kind::Float, Device::Cpu)
            .err()
            .unwrap_or_else(|| panic!("{name} loaded"));
        let message = error.to_string();
        println!("{name}: {message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        let expected = match name.as_str() {
            "hostile" => matches!(
                &error,
                HypernetworkError::Pickle(PickleError::RefusedGlobal { name, .. }) if name == "system"
            ),
            "not_a_zip" => matches!(
                error,
                HypernetworkError::Pickle(PickleError::NotTorchFile { .. })
            ),
            "unknown_activation" => message.contains("unsupported activation function `banana`"),
            "threshold" => message.contains("`threshold` cannot be used"),
            "glu" => message.contains("`glu` cannot be used"),
            "missing_weight" => message.contains("missing weight `linear.2.bias`"),
            "wrong_shape" => message.contains("weight `linear.0.weight` has shape [32, 64]"),
            "extra_weight" => matches!(
                &error,
                HypernetworkError::UnexpectedWeights { keys, .. } if keys == &["linear.7.weight"]
            ),
            "bad_layer_structure" => message.contains("must start and end with 1"),
            "bad_dropout" => message.contains("below 1"),
            other => panic!("unexpected fixture {other}"),
        };
        assert!(expected, "{name}: {error:?}");
    }
    assert!(
        !fixtures.root.join("PWNED").exists(),
        "the hostile pickle ran its command"
    );
}

#[test]
fn the_unet_with_chained_hypernetworks_matches_a1111s_attention_hook() {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let fixtures = Fixtures::make();
    let dir = tempfile::tempdir().unwrap();
    // Two attention widths (32: the context and the first levels, 64: the deeper ones).
    let checkpoint = common::tiny_deep_model(dir.path(), 23, false);
    let cases = [
        ("one", "<hypernet:relu_ln>"),
        ("chained", "<hypernet:swish_deep:0.7> <hypernet:mish_dropout:1.3>"),
        ("only_64", "<hypernet:width64:1.0>"),
        ("zero", "<hypernet:defaults:0>"),
        (
            "three",
            "<hypernet:old_keys:0.5><hypernet:act_gelu:1><hypernet:single:-0.6><hypernet:linear_ln:0.6>",
        ),
    ];
    let json: serde_json::Map<String, serde_json::Value> = cases
        .iter()
        .map(|(case, prompt)| {
            let tags = &parse_prompt(prompt).1["hypernet"];
            let entries: Vec<serde_json::Value> = tags
                .iter()
                .map(|t| {
                    let m: f64 = t.items.get(1).map_or(1.0, |m| m.parse().unwrap());
                    serde_json::json!([t.items[0], m])
                })
                .collect();
            (case.to_string(), serde_json::Value::from(entries))
        })
        .collect();
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_string(&json).unwrap()).unwrap();
    let reference = dir.path().join("unet.safetensors");
    common::run_reference(
        "hypernetwork_reference.py",
        &[
            "unet".as_ref(),
            checkpoint.as_os_str(),
            fixtures.root.as_os_str(),
            cases_path.as_os_str(),
            reference.as_os_str(),
        ],
    );
    let r = common::read_tensors(&reference);
    let model = with_hypernetworks(
        GenerationModel::load(&checkpoint, Device::Cpu, Kind::Float, None).unwrap(),
        &fixtures.root,
    );
    let unet = &model.sd.unet;
    let forward = || unet.forward(&r["x"], &r["t"], &r["context"], None);
    let plain = forward();
    common::assert_close("none", &plain, &r["none"], 1e-4);
    for (case, prompt) in cases {
        let active = model.activate_hypernetworks(&parse_prompt(prompt).1);
        assert!(active.warnings().is_empty(), "{:?}", active.warnings());
        let out = forward();
        common::assert_close(case, &out, &r[case], 1e-4);
        let change = (&out - &plain).abs().max().double_value(&[]);
        println!("  {case}: largest change from no hypernetwork {change:.3e}");
        if case == "zero" {
            // Multiplier 0: x + seq(x)·0 is x, exactly.
            assert_eq!(change, 0.0);
        } else {
            assert!(change > 1e-2, "{case} changed nothing");
        }
        drop(active);
        assert!(unet.hypernetworks().is_empty());
        assert_eq!(forward(), plain, "{case}: the UNet is not itself again");
    }
}

fn job_params(prompt: &str) -> GenerationRequest {
    GenerationRequest {
        prompt: prompt.into(),
        negative_prompt: "blurry".into(),
        width: 64,
        height: 64,
        cfg_scale: 6.5,
        seed: 31337,
        batch_size: 2,
        sampler: SamplerSettings {
            sampler: "Euler".into(),
            steps: 12,
            denoising_strength: 0.6,
            ..SamplerSettings::default()
        },
        ..GenerationRequest::default()
    }
}

fn run(model: &GenerationModel, params: &GenerationRequest, init: &image::RgbImage) -> JobOutcome {
    let registry = common::builtin_registry();
    run_img2img_unobserved(model, &registry, params, init, None).expect("job runs")
}

#[test]
fn an_img2img_job_with_a_hypernetwork_matches_the_reference_pipeline() {
    tch::set_num_threads(1);
    let fixtures = Fixtures::make();
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = common::tiny_model(dir.path(), 11);
    let init_path = dir.path().join("init.png");
    let init = common::test_picture(&init_path);
    let hypernets = dir.path().join("hypernets.json");
    let relu_ln = fixtures.path("relu_ln");
    std::fs::write(
        &hypernets,
        serde_json::json!([[relu_ln.to_str().unwrap(), 0.7]]).to_string(),
    )
    .unwrap();
    let cases = dir.path().join("cases.json");
    std::fs::write(
        &cases,
        serde_json::json!([{
            "name": "hn", "sampler": "sample_euler", "karras": false, "steps": 12,
            "strength": 0.6, "seeds": [31337, 31338], "width": 64, "height": 64,
            "prompt": "a red cat on a sofa", "negative_prompt": "blurry", "cfg_scale": 6.5,
        }])
        .to_string(),
    )
    .unwrap();
    common::run_reference(
        "hypernetwork_reference.py",
        &[
            "img2img".as_ref(),
            hypernets.as_os_str(),
            checkpoint.as_os_str(),
            init_path.as_os_str(),
            cases.as_os_str(),
            dir.path().as_os_str(),
        ],
    );

    let model = with_hypernetworks(
        GenerationModel::load(&checkpoint, Device::Cpu, Kind::Float, None).unwrap(),
        &fixtures.root,
    );
    let prompt = "a red cat on a sofa <hypernet:relu_ln:0.7>";
    let outcome = run(&model, &job_params(prompt), &init);
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
    assert!(model.sd.unet.hypernetworks().is_empty(), "not cleared");
    let plain = run(&model, &job_params("a red cat on a sofa"), &init);
    for (i, generated) in outcome.images.iter().enumerate() {
        let expected = image::open(dir.path().join(format!("hn_{i}.png")))
            .unwrap()
            .to_rgb8();
        let (mean, max) = common::pixel_difference(&generated.image, &expected);
        println!("image {i}: mean |Δ| {mean:.4}, max {max} (of 255)");
        assert!(mean <= 1.0, "image {i}: mean |Δ| {mean:.4}");
        let (without, _) = common::pixel_difference(&generated.image, &plain.images[i].image);
        println!("  without the hypernetwork: mean |Δ| {without:.2}");
        assert!(
            without > 5.0,
            "the hypernetwork changed too little: {without}"
        );
        // The tag stays in the infotext's prompt, as in A1111 (hypernetworks add no key).
        let text = generated.infotext.to_text();
        assert!(text.starts_with(prompt), "{text}");
    }
    // The cache kept the file for the next job; a job without it unloaded it.
    assert!(model.hypernetworks.is_empty());
}

#[test]
fn missing_or_broken_hypernetworks_are_warnings_and_the_job_runs_without_them() {
    tch::set_num_threads(1);
    let fixtures = Fixtures::make();
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = common::tiny_model(dir.path(), 11);
    let init = common::test_picture(&dir.path().join("init.png"));
    let model = with_hypernetworks(
        GenerationModel::load(&checkpoint, Device::Cpu, Kind::Float, None).unwrap(),
        &fixtures.root,
    );
    let plain = run(&model, &job_params("a cat"), &init);
    assert!(plain.warnings.is_empty());

    let outcome = run(
        &model,
        &job_params("a cat <hypernet:nowhere:1> <hypernet:missing_weight> <hypernet:hostile:2>"),
        &init,
    );
    println!("{:#?}", outcome.warnings);
    assert_eq!(outcome.warnings.len(), 3);
    assert!(outcome.warnings[0].contains("`nowhere` not found"));
    assert!(outcome.warnings[0].contains(&fixtures.root.display().to_string()));
    assert!(outcome.warnings[1].contains(&fixtures.path("missing_weight").display().to_string()));
    assert!(outcome.warnings[2].contains("refused"));
    for (a, b) in outcome.images.iter().zip(&plain.images) {
        assert_eq!(
            a.image, b.image,
            "a failed hypernetwork changed the picture"
        );
    }

    // A multiplier that is not a number fails A1111's whole hypernetwork activation.
    let outcome = run(
        &model,
        &job_params("a cat <hypernet:relu_ln:1> <hypernet:defaults:x>"),
        &init,
    );
    assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
    assert!(outcome.warnings[0].contains("`x` is not a number"));
    assert_eq!(outcome.images[0].image, plain.images[0].image);

    // No folder configured: the warning says so.
    let bare = GenerationModel::load(&checkpoint, Device::Cpu, Kind::Float, None).unwrap();
    let active = bare.activate_hypernetworks(&parse_prompt("<hypernet:relu_ln>").1);
    assert!(
        active.warnings()[0].contains("no hypernetwork folder"),
        "{:?}",
        active.warnings()
    );
    assert!(active.is_empty());
}

#[test]
fn hypernetworks_are_cleared_when_a_job_is_cancelled_and_reused_when_named_again() {
    let _guard = tch::no_grad_guard();
    let fixtures = Fixtures::make();
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = common::tiny_model(dir.path(), 11);
    let init = common::test_picture(&dir.path().join("init.png"));
    let model = with_hypernetworks(
        GenerationModel::load(&checkpoint, Device::Cpu, Kind::Float, None).unwrap(),
        &fixtures.root,
    );
    let registry = common::builtin_registry();
    let mut steps = 0;
    let outcome = run_img2img(
        &model,
        &registry,
        &job_params("a cat <hypernet:relu_ln> <hypernet:relu_ln:0.5>"),
        &init,
        None,
        &JobStop::new(),
        &mut |_| {
            steps += 1;
            assert_eq!(model.sd.unet.hypernetworks().len(), 2, "set during the job");
            Flow::Cancel
        },
    )
    .unwrap();
    assert!(outcome.cancelled);
    assert!(steps > 0);
    assert!(
        model.sd.unet.hypernetworks().is_empty(),
        "not cleared on cancel"
    );
    // One file named twice is loaded once and kept for the next job.
    assert_eq!(model.hypernetworks.len(), 1);
    let tags = parse_prompt("<hypernet:relu_ln:1> <hypernet:act_mish>").1;
    let active = model.activate_hypernetworks(&tags);
    assert_eq!((active.len(), model.hypernetworks.len()), (2, 2));
    drop(active);

    // A file that changed is read again: act_mish.pt replaced by act_relu.pt's bytes.
    let x = Tensor::randn([1, 3, 32], (Kind::Float, Device::Cpu));
    let expected = |name: &str| {
        let network = load_hypernetwork(&fixtures.path(name), Kind::Float, Device::Cpu).unwrap();
        let (k, v) = network.modules(32).unwrap();
        (k.forward(&x, 1.0), v.forward(&x, 1.0))
    };
    let only_mish = parse_prompt("<hypernet:act_mish>").1;
    let contexts = || {
        let active = model.activate_hypernetworks(&only_mish);
        assert!(active.warnings().is_empty(), "{:?}", active.warnings());
        model.sd.unet.hypernetworks().contexts(&x).unwrap()
    };
    assert_eq!(contexts(), expected("act_mish"));
    std::fs::copy(fixtures.path("act_relu"), fixtures.path("act_mish")).unwrap();
    assert_eq!(contexts(), expected("act_relu"));
}

#[test]
fn the_command_line_and_the_daemon_take_their_hypernetwork_folder() {
    use sdhost::daemon::protocol::{read_frame, write_frame, Attachment, FrameLimits, PixelFormat};
    use serde_json::json;
    use std::process::Command;

    let fixtures = Fixtures::make();
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), 11);
    let init = dir.path().join("init.png");
    common::test_picture(&init);
    let sdhost = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sdhost"));
        command
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_RUNTIME_DIR", dir.path().join("run"))
            .env("SDHOST_CACHE_DIR", dir.path().join("cache"));
        command
    };

    // `sdhost img2img --hypernetwork-dir`: applied, and a missing one is a warning.
    let img2img = |prompt: &str, out: &str| {
        let output = sdhost()
            .args(["img2img", "--model"])
            .arg(&model)
            .arg("--init-image")
            .arg(&init)
            .arg("--out-dir")
            .arg(dir.path().join(out))
            .args([
                "--prompt", prompt, "--seed", "3", "--steps", "4", "--width", "64",
            ])
            .args(["--height", "64", "--threads", "1", "--hypernetwork-dir"])
            .arg(&fixtures.root)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        let image = image::open(dir.path().join(out).join("00000-3.png")).unwrap();
        (image.to_rgb8(), stderr)
    };
    let (with, stderr) = img2img("a cat <hypernet:relu_ln:0.7> <hypernet:nope>", "with");
    let expected = format!(
        "warning: hypernetwork `nope` not found (searched {})",
        fixtures.root.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    let (plain, stderr) = img2img("a cat", "plain");
    assert!(!stderr.contains("warning"), "{stderr}");
    let (mean, _) = common::pixel_difference(&with, &plain);
    assert!(mean > 1.0, "the hypernetwork was not applied: {mean}");

    // `sdhost serve` with `hypernetwork_dir` in its config: the warning comes with `done`.
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!("hypernetwork_dir = {:?}\n", fixtures.root.to_str().unwrap()),
    )
    .unwrap();
    let socket = dir.path().join("daemon.sock");
    let mut daemon = sdhost()
        .args(["serve", "--threads", "1", "--model"])
        .arg(&model)
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let mut stream = loop {
        if let Ok(stream) = std::os::unix::net::UnixStream::connect(&socket) {
            break stream;
        }
        assert!(start.elapsed().as_secs() < 60, "the daemon did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let limits = FrameLimits {
        max_payload: 1 << 30,
    };
    let hello = json!({"type": "hello", "id": 1, "protocol": 1, "client": "test"});
    write_frame(&mut stream, &hello, &[]).unwrap();
    assert_eq!(
        read_frame(&mut stream, limits).unwrap().header["type"],
        "welcome"
    );
    let pixels: Vec<u8> = (0..32 * 32 * 4).map(|i| (i % 251) as u8).collect();
    let image = Attachment {
        name: "image".into(),
        format: PixelFormat::Rgba8,
        width: 32,
        height: 32,
        length: pixels.len() as u64,
    };
    let job = json!({"type": "img2img", "id": 2, "params": {
        "prompt": "a house <hypernet:nope:0.5> <hypernet:relu_ln>", "seed": 1, "steps": 2,
        "sampler_name": "Euler", "denoising_strength": 0.5,
    }});
    write_frame(&mut stream, &job, &[(image, pixels)]).unwrap();
    let done = loop {
        let header = read_frame(&mut stream, limits).unwrap().header;
        match header["type"].as_str().unwrap() {
            "done" => break header,
            "error" | "cancelled" => panic!("{header}"),
            _ => {}
        }
    };
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(done["images"], 1);
    let warnings = done["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{done}");
    assert!(warnings[0].as_str().unwrap().contains("`nope` not found"));
}
