//! Interrogate CLIP and DeepBooru end to end on tiny models laid out as in an A1111 install
//! (tests/reference/interrogate_models.py): every option set gives the prompt A1111's code path
//! gives with the same weights (BLIP, CLIP and DeepDanbooru references composed), through the
//! library, `sdhost interrogate`, the daemon's `interrogate` request and Loopback's "Append
//! interrogated prompt"; missing and broken files are clear errors before any work.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::cli::{assert_one_line_error, assert_success, run_sdhost};
use crate::common;
use crate::daemon::{start_daemon, Client};
use sdhost::daemon::protocol::{Attachment, PixelFormat};
use sdhost::interrogate::options::read_interrogate_options;
use sdhost::interrogate::{InterrogateFiles, InterrogateMethod, InterrogateOptions, Interrogator};

/// The models, the picture and the expected prompts, made once for all tests.
struct Fixture {
    _dir: tempfile::TempDir,
    models: PathBuf,
    picture: PathBuf,
    cases: Vec<Case>,
}

struct Case {
    method: InterrogateMethod,
    settings: serde_json::Map<String, Value>,
    options: InterrogateOptions,
    expected: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        let picture = dir.path().join("picture.png");
        let expected = dir.path().join("expected.json");
        common::run_reference(
            "interrogate_models.py",
            &[
                "--write-models".as_ref(),
                models.as_os_str(),
                "--picture".as_ref(),
                picture.as_os_str(),
                "--expect".as_ref(),
                models.as_os_str(),
                picture.as_os_str(),
                expected.as_os_str(),
            ],
        );
        let cases: Value = serde_json::from_slice(&std::fs::read(&expected).unwrap()).unwrap();
        let cases = cases["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|case| {
                let settings = case["options"].as_object().unwrap().clone();
                Case {
                    method: InterrogateMethod::parse(case["method"].as_str().unwrap()).unwrap(),
                    options: read_interrogate_options(&settings).unwrap(),
                    settings,
                    expected: case["expected"].as_str().unwrap().to_string(),
                }
            })
            .collect();
        Fixture {
            _dir: dir,
            models,
            picture,
            cases,
        }
    })
}

fn files(models: &Path) -> InterrogateFiles {
    InterrogateFiles {
        models_dir: Some(models.to_path_buf()),
        ..InterrogateFiles::default()
    }
}

fn picture(fx: &Fixture) -> image::RgbImage {
    image::open(&fx.picture).unwrap().to_rgb8()
}

/// The first case of `method` with A1111's default options.
fn default_case(fx: &Fixture, method: InterrogateMethod) -> &Case {
    fx.cases
        .iter()
        .find(|c| c.method == method && c.settings.is_empty())
        .unwrap()
}

#[test]
fn every_option_set_gives_a1111s_prompt_with_and_without_the_feature_cache() {
    let fx = fixture();
    let image = picture(fx);
    let cache = tempfile::tempdir().unwrap();
    let mut cached = Interrogator::new(
        files(&fx.models),
        tch::Device::Cpu,
        Some(cache.path().into()),
    );
    let mut uncached = Interrogator::new(files(&fx.models), tch::Device::Cpu, None);
    for case in &fx.cases {
        let got = cached
            .interrogate(&image, case.method, &case.options)
            .unwrap();
        assert_eq!(got, case.expected, "{:?} {:?}", case.method, case.settings);
        // The second call reads CLIP's text features from the cache; the same prompt.
        let again = cached
            .interrogate(&image, case.method, &case.options)
            .unwrap();
        assert_eq!(again, case.expected, "cached: {:?}", case.settings);
        let plain = uncached
            .interrogate(&image, case.method, &case.options)
            .unwrap();
        assert_eq!(plain, case.expected, "uncached: {:?}", case.settings);
    }
    let written = std::fs::read_dir(cache.path()).unwrap().count();
    assert!(written > 0, "the text features were cached");
}

#[test]
fn the_command_line_prints_the_prompt() {
    let fx = fixture();
    for (method, flag) in [
        (InterrogateMethod::Clip, "clip"),
        (InterrogateMethod::Deepbooru, "deepbooru"),
    ] {
        let out = run_sdhost(&[
            "interrogate".as_ref(),
            fx.picture.as_os_str(),
            "--method".as_ref(),
            flag.as_ref(),
            "--models-dir".as_ref(),
            fx.models.as_os_str(),
            "--json".as_ref(),
        ]);
        assert_success(&out);
        let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            printed["caption"],
            default_case(fx, method).expected.as_str()
        );
        assert_eq!(printed["method"], method.api_name());
    }
    // Option flags are A1111's options.
    let out = run_sdhost(&[
        "interrogate".as_ref(),
        fx.picture.as_os_str(),
        "--models-dir".as_ref(),
        fx.models.as_os_str(),
        "--return-ranks".as_ref(),
    ]);
    assert_success(&out);
    let ranked = fx
        .cases
        .iter()
        .find(|c| c.method == InterrogateMethod::Clip && c.options.interrogate_return_ranks)
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        ranked.expected
    );
}

#[test]
fn missing_and_broken_files_are_clear_errors_before_any_work() {
    let fx = fixture();
    let empty = tempfile::tempdir().unwrap();
    let out = run_sdhost(&[
        "interrogate".as_ref(),
        "no-such-picture.png".as_ref(),
        "--models-dir".as_ref(),
        empty.path().as_os_str(),
    ]);
    // The missing model is named (with where A1111 gets it) before the picture is even read.
    assert_one_line_error(&out, "BLIP/model_base_caption_capfilt_large.pth");
    assert!(String::from_utf8_lossy(&out.stderr).contains("storage.googleapis.com"));
    let out = run_sdhost(&[
        "interrogate".as_ref(),
        fx.picture.as_os_str(),
        "--method".as_ref(),
        "deepbooru".as_ref(),
        "--models-dir".as_ref(),
        empty.path().as_os_str(),
    ]);
    assert_one_line_error(&out, "torch_deepdanbooru/model-resnet_custom_v3.pt");

    // A truncated BLIP file and a CLIP file that is not CLIP: typed errors, no panic.
    let broken = tempfile::tempdir().unwrap();
    let models = broken.path().join("models");
    copy_tree(&fx.models, &models);
    let blip = models.join("BLIP/model_base_caption_capfilt_large.pth");
    let bytes = std::fs::read(&blip).unwrap();
    std::fs::write(&blip, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::create_dir_all(broken.path().join("interrogate")).unwrap();
    let mut interrogator = Interrogator::new(files(&models), tch::Device::Cpu, None);
    let image = picture(fx);
    let options = InterrogateOptions::default();
    let error = interrogator
        .interrogate(&image, InterrogateMethod::Clip, &options)
        .unwrap_err()
        .to_string();
    assert!(error.contains("BLIP"), "{error}");
    std::fs::write(&blip, &bytes).unwrap();
    let clip = models.join("clip/ViT-L-14.pt");
    std::fs::copy(
        models.join("torch_deepdanbooru/model-resnet_custom_v3.pt"),
        &clip,
    )
    .unwrap();
    let error = interrogator
        .interrogate(&image, InterrogateMethod::Clip, &options)
        .unwrap_err()
        .to_string();
    assert!(error.contains("CLIP"), "{error}");
    // An empty picture (a library caller's; the socket's framing refuses empty attachments).
    let mut fine = Interrogator::new(files(&fx.models), tch::Device::Cpu, None);
    let error = fine
        .interrogate(
            &image::RgbImage::new(0, 8),
            InterrogateMethod::Deepbooru,
            &options,
        )
        .unwrap_err()
        .to_string();
    assert!(error.contains("empty"), "{error}");
    // Out-of-range options are refused before a model loads.
    let beams = InterrogateOptions {
        interrogate_clip_num_beams: 0,
        ..InterrogateOptions::default()
    };
    let error = Interrogator::new(files(empty.path()), tch::Device::Cpu, None)
        .check(InterrogateMethod::Clip, &beams)
        .unwrap_err()
        .to_string();
    assert!(error.contains("num_beams"), "{error}");
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn picture_attachment(image: &image::RgbImage) -> (Attachment, Vec<u8>) {
    let rgba = image::DynamicImage::ImageRgb8(image.clone()).to_rgba8();
    let bytes = rgba.into_raw();
    (
        Attachment {
            name: "image".into(),
            format: PixelFormat::Rgba8,
            width: image.width(),
            height: image.height(),
            length: bytes.len() as u64,
        },
        bytes,
    )
}

/// Sends an `interrogate` request and returns its final event.
fn interrogate(client: &mut Client, header: Value, image: &image::RgbImage) -> Value {
    let id = client.send(header, &[picture_attachment(image)]);
    let first = client.answer(id).header;
    if first["type"] != "queued" {
        return first;
    }
    let job = first["job"].clone();
    loop {
        let event = client.read().header;
        if event["job"] == job
            && ["done", "error", "cancelled"].contains(&event["type"].as_str().unwrap())
        {
            return event;
        }
    }
}

#[test]
fn the_daemon_answers_interrogate_requests_and_survives_missing_models() {
    let fx = fixture();
    let image = picture(fx);
    let models = fx.models.to_str().unwrap();
    let daemon = start_daemon(&["--models-dir", models], None);
    let mut client = Client::connected(&daemon.socket);
    for case in fx.cases.iter().filter(|c| c.settings.len() <= 1) {
        let method = match case.method {
            InterrogateMethod::Clip => "clip",
            InterrogateMethod::Deepbooru => "deepbooru",
        };
        let done = interrogate(
            &mut client,
            json!({"type": "interrogate", "method": method, "options": case.settings}),
            &image,
        );
        assert_eq!(done["type"], "done", "{done}");
        assert_eq!(
            done["caption"],
            case.expected.as_str(),
            "{:?}",
            case.settings
        );
        assert_eq!(done["method"], case.method.api_name());
    }
    let refused = interrogate(
        &mut client,
        json!({"type": "interrogate", "method": "blip"}),
        &image,
    );
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{refused}"
    );
    let refused = interrogate(
        &mut client,
        json!({"type": "interrogate", "method": "clip", "options": {"interrogate_clip_num_beams": 40}}),
        &image,
    );
    assert_eq!(refused["code"], "invalid_params", "{refused}");
    drop(daemon);

    // Without the models: an error naming the file, and the daemon goes on.
    let bare = start_daemon(&[], None);
    let mut client = Client::connected(&bare.socket);
    let failed = interrogate(
        &mut client,
        json!({"type": "interrogate", "method": "deepbooru"}),
        &image,
    );
    assert_eq!(failed["code"], "model_load_failed", "{failed}");
    assert!(failed["message"].as_str().unwrap().contains("DeepDanbooru"));
    let id = client.send(json!({"type": "ping"}), &[]);
    assert_eq!(client.answer(id).header["type"], "pong");
}

#[test]
fn loopback_appends_each_loops_interrogation_to_the_prompt() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), 7);
    let out = dir.path().join("out");
    let done = run_sdhost(&[
        "img2img".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--models-dir".as_ref(),
        fx.models.as_os_str(),
        "--init-image".as_ref(),
        fx.picture.as_os_str(),
        "--out-dir".as_ref(),
        out.as_os_str(),
        "--threads".as_ref(),
        "1".as_ref(),
        "--width".as_ref(),
        "64".as_ref(),
        "--height".as_ref(),
        "48".as_ref(),
        "--steps".as_ref(),
        "2".as_ref(),
        "--prompt".as_ref(),
        "a house".as_ref(),
        "--script".as_ref(),
        "Loopback".as_ref(),
        "--script-arg".as_ref(),
        "2".as_ref(),
        "--script-arg".as_ref(),
        "0.4".as_ref(),
        "--script-arg".as_ref(),
        "Linear".as_ref(),
        "--script-arg".as_ref(),
        "DeepBooru".as_ref(),
    ]);
    assert_success(&done);
    let mut loops: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    loops.sort();
    assert_eq!(loops.len(), 2, "{loops:?}");
    let mut interrogator = Interrogator::new(files(&fx.models), tch::Device::Cpu, None);
    let options = InterrogateOptions::default();
    // Loop 1 interrogates the init picture (A1111's `p.init_images[0]`, before any resize),
    // loop 2 loop 1's result.
    let first_input = image::open(&fx.picture).unwrap().to_rgb8();
    for (i, path) in loops.iter().enumerate() {
        let seen = if i == 0 {
            first_input.clone()
        } else {
            image::open(&loops[i - 1]).unwrap().to_rgb8()
        };
        let tags = interrogator
            .interrogate(&seen, InterrogateMethod::Deepbooru, &options)
            .unwrap();
        let infotext = sdhost::pipeline::png_info::read_png_infotext(path)
            .unwrap()
            .unwrap();
        let prompt = infotext.lines().next().unwrap();
        assert_eq!(prompt, format!("a house, {tags}"), "loop {i}");
    }
}
