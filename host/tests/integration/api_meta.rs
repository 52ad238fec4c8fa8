//! The A1111 API's non-generation endpoints on a daemon serving an A1111 `models/` folder of
//! two tiny models, over HTTP: `/options` (defaults, posted keys echoed, the model switched
//! by an alias and read back as its exact `/sd-models` title, unknown models and bad values
//! refused in A1111's shapes), the listings, `/refresh-checkpoints` finding a new file,
//! `/png-info` and the extras upscalers.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// A 1×1 RGB PNG, base64.
const TINY_PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGMQUDAAAACkAGE0Zn1yAAAAAElFTkSuQmCC";

/// A daemon with the API over a models folder; killed when dropped.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sdhost serve --api-addr 127.0.0.1:0 --models-dir models` with tiny models `a` and `b`.
fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("models/Stable-diffusion");
    std::fs::create_dir_all(&checkpoints).unwrap();
    for (name, seed) in [("a", 41), ("b", 42)] {
        let made = common::tiny_model(dir.path(), seed);
        std::fs::rename(made, checkpoints.join(format!("{name}.safetensors"))).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_sdhost"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_RUNTIME_DIR", dir.path().join("run"))
        .env("SDHOST_CACHE_DIR", dir.path().join("cache"))
        .args(["serve", "--threads", "1", "--api-addr", "127.0.0.1:0"])
        .arg("--models-dir")
        .arg(dir.path().join("models"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sdhost serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the daemon printed its address")
            .unwrap();
        if let Some(address) = line.strip_prefix("sdhost: A1111 API on ") {
            break address.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, dir, url }
}

/// Status and JSON body of a request (any status).
fn call(request: ureq::Request, body: Option<&Value>) -> (u16, Value) {
    let result = match body {
        Some(value) => request
            .set("Content-Type", "application/json")
            .send_bytes(&serde_json::to_vec(value).unwrap()),
        None => request.call(),
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(other) => panic!("transport error: {other}"),
    };
    let status = response.status();
    let mut text = String::new();
    response.into_reader().read_to_string(&mut text).unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value)
}

fn get(server: &Server, path: &str) -> (u16, Value) {
    call(ureq::get(&format!("{}{path}", server.url)), None)
}

fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    call(ureq::post(&format!("{}{path}", server.url)), Some(body))
}

/// The `/sd-models` entry whose title starts with `name`.
fn model_entry(server: &Server, name: &str) -> Value {
    let (status, models) = get(server, "/sdapi/v1/sd-models");
    assert_eq!(status, 200);
    models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["title"].as_str().unwrap().starts_with(name))
        .cloned()
        .unwrap_or_else(|| panic!("{name} in {models}"))
}

#[test]
fn options_switch_models_by_any_alias_and_read_back_titles() {
    let server = start();
    let (status, options) = get(&server, "/sdapi/v1/options");
    assert_eq!(status, 200);
    // The first model is loaded, so its hash is known and its title carries it.
    let a = model_entry(&server, "a.safetensors");
    assert_eq!(options["sd_model_checkpoint"], a["title"]);
    assert_eq!(options["sd_checkpoint_hash"], a["sha256"]);
    assert_eq!(a["hash"].as_str().unwrap().len(), 10);
    assert_eq!(a["model_name"], "a");
    assert_eq!(a["config"], Value::Null);
    assert!(a["filename"].as_str().unwrap().ends_with("a.safetensors"));
    for key in [
        "sd_vae",
        "CLIP_stop_at_last_layers",
        "img2img_color_correction",
        "inpainting_mask_weight",
        "eta_noise_seed_delta",
        "randn_source",
        "samples_format",
    ] {
        assert!(options.get(key).is_some(), "{key}");
    }
    assert!(options.get("use_scale_latent_for_hires_fix").is_none());
    // b has not been hashed yet: A1111 lists it without one.
    let b = model_entry(&server, "b.safetensors");
    assert_eq!(b["title"], "b.safetensors");
    assert_eq!(b["hash"], Value::Null);

    // Any alias switches synchronously; GET reads back the exact title.
    let posted =
        json!({"sd_model_checkpoint": "b", "CLIP_stop_at_last_layers": "2", "my_key": [1]});
    let (status, answer) = post(&server, "/sdapi/v1/options/", &posted);
    assert_eq!((status, answer), (200, Value::Null));
    let b = model_entry(&server, "b.safetensors");
    assert_eq!(b["hash"].as_str().unwrap().len(), 10);
    let (_, options) = get(&server, "/sdapi/v1/options");
    assert_eq!(options["sd_model_checkpoint"], b["title"]);
    assert_eq!(options["CLIP_stop_at_last_layers"], 2);
    assert_eq!(options["my_key"], json!([1]));
    // The short hash of a and a's title work too.
    for alias in [a["hash"].clone(), a["title"].clone(), b["sha256"].clone()] {
        let (status, _) = post(
            &server,
            "/sdapi/v1/options",
            &json!({"sd_model_checkpoint": alias}),
        );
        assert_eq!(status, 200, "{alias}");
    }
    let (_, options) = get(&server, "/sdapi/v1/options");
    assert_eq!(options["sd_model_checkpoint"], b["title"]);

    let (status, error) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"sd_model_checkpoint": "nope"}),
    );
    assert_eq!(status, 500);
    assert_eq!(
        error,
        json!({"error": "RuntimeError", "detail": "", "body": "", "errors": "model 'nope' not found"})
    );
    let (status, error) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"randn_source": "quantum"}),
    );
    assert_eq!(status, 422, "{error}");
    let (_, options) = get(&server, "/sdapi/v1/options");
    assert_eq!(options["randn_source"], "GPU");

    // The daemon's checkpoints limit: reported, changed by a post, kept within 1 … 10.
    assert_eq!(options["sd_checkpoints_limit"], 1);
    let (status, _) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"sd_checkpoints_limit": 2}),
    );
    assert_eq!(status, 200);
    let (status, error) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"sd_checkpoints_limit": 11}),
    );
    assert_eq!(status, 422, "{error}");
    assert!(
        error.to_string().contains("sd_checkpoints_limit"),
        "{error}"
    );
    let (_, options) = get(&server, "/sdapi/v1/options");
    assert_eq!(options["sd_checkpoints_limit"], 2);
    // With two kept loaded, switching back and forth works as before.
    for name in ["a", "b", "a"] {
        let (status, _) = post(
            &server,
            "/sdapi/v1/options",
            &json!({"sd_model_checkpoint": name}),
        );
        assert_eq!(status, 200, "{name}");
    }
    let (_, options) = get(&server, "/sdapi/v1/options");
    assert_eq!(options["sd_model_checkpoint"], a["title"]);
}

#[test]
fn listings_have_a1111_shapes_and_refresh_finds_new_checkpoints() {
    let server = start();
    let (_, samplers) = get(&server, "/sdapi/v1/samplers");
    let samplers = samplers.as_array().unwrap();
    assert!(samplers.len() >= 19, "{samplers:?}");
    assert_eq!(
        samplers[0],
        json!({"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}})
    );
    let euler_a = samplers.iter().find(|s| s["name"] == "Euler a").unwrap();
    assert_eq!(euler_a["options"], json!({"uses_ensd": "True"}));
    let (_, schedulers) = get(&server, "/sdapi/v1/schedulers");
    assert_eq!(schedulers.as_array().unwrap().len(), 12);
    assert_eq!(schedulers[2]["label"], "Karras");
    let (_, upscalers) = get(&server, "/sdapi/v1/upscalers");
    let names: Vec<&str> = upscalers
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["None", "Lanczos", "Nearest"]);
    let (_, modes) = get(&server, "/sdapi/v1/latent-upscale-modes");
    assert_eq!(modes[0], json!({"name": "Latent"}));
    assert_eq!(modes.as_array().unwrap().len(), 6);
    for (path, expected) in [
        ("/sdapi/v1/scripts", json!({"txt2img": [], "img2img": []})),
        ("/sdapi/v1/script-info", json!([])),
        ("/sdapi/v1/prompt-styles", json!([])),
        ("/sdapi/v1/face-restorers", json!([])),
        ("/sdapi/v1/realesrgan-models", json!([])),
        ("/sdapi/v1/loras", json!([])),
        ("/sdapi/v1/hypernetworks", json!([])),
        ("/sdapi/v1/sd-vae", json!([])),
        ("/sdapi/v1/embeddings", json!({"loaded": {}, "skipped": {}})),
        ("/controlnet/model_list", json!({"model_list": []})),
        ("/controlnet/module_list", json!({"module_list": ["none"]})),
    ] {
        assert_eq!(get(&server, path), (200, expected), "{path}");
    }
    let (_, memory) = get(&server, "/sdapi/v1/memory");
    assert!(memory["ram"]["total"].as_f64().unwrap() > 0.0, "{memory}");
    assert_eq!(memory["cuda"], json!({"error": "unavailable"}));
    let (_, flags) = get(&server, "/sdapi/v1/cmd-flags");
    assert_eq!(flags["api"], true);
    assert_eq!(flags["listen"], false);
    // A1111's checks come before any model is needed: a null image, then an undecodable
    // one, then an unknown model.
    for (body, status, detail) in [
        (json!({"image": null}), 404, "Image not found"),
        (
            json!({"image": "", "model": "clip"}),
            500,
            "Invalid encoded image",
        ),
        (
            json!({"image": TINY_PNG_B64, "model": "blip"}),
            404,
            "Model not found",
        ),
    ] {
        let (got, error) = post(&server, "/sdapi/v1/interrogate", &body);
        assert_eq!(
            (got, error["detail"].as_str()),
            (status, Some(detail)),
            "{body}"
        );
    }

    let checkpoints = server.dir.path().join("models/Stable-diffusion");
    std::fs::copy(
        checkpoints.join("a.safetensors"),
        checkpoints.join("c.safetensors"),
    )
    .unwrap();
    let (_, before) = get(&server, "/sdapi/v1/sd-models");
    assert_eq!(before.as_array().unwrap().len(), 2);
    for path in [
        "refresh-checkpoints",
        "refresh-vae",
        "refresh-loras",
        "refresh-embeddings",
    ] {
        let answer = post(&server, &format!("/sdapi/v1/{path}"), &json!({}));
        assert_eq!(answer, (200, Value::Null), "{path}");
    }
    let (_, after) = get(&server, "/sdapi/v1/sd-models");
    assert_eq!(after.as_array().unwrap().len(), 3);
    // c is a's copy: the same hash once cached, selectable by its own name.
    let (status, _) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"sd_model_checkpoint": "c.safetensors"}),
    );
    assert_eq!(status, 200);
}

/// A PNG of `width`×`height` with `infotext`, as base64.
fn png(width: u32, height: u32, infotext: Option<&str>) -> String {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 9) as u8, (y * 13) as u8, 77])
    });
    B64.encode(sdhost::pipeline::png_info::png_bytes(&image, infotext).unwrap())
}

/// The size and text chunks of a returned PNG.
fn read_png(text: &str) -> ((u32, u32), Vec<(String, String)>) {
    let bytes = B64.decode(text).unwrap();
    let size = image::load_from_memory(&bytes).unwrap();
    let texts = sdhost::pipeline::png_info::png_texts(&bytes).unwrap();
    ((size.width(), size.height()), texts)
}

#[test]
fn png_info_and_extras_work_as_a1111() {
    let server = start();
    let infotext = "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 5, Size: 20x12";
    let picture = png(20, 12, Some(infotext));
    let (status, info) = post(
        &server,
        "/sdapi/v1/png-info",
        &json!({"image": format!("data:image/png;base64,{picture}")}),
    );
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["info"], infotext);
    assert_eq!(info["items"], json!({}));
    assert_eq!(info["parameters"]["Steps"], "20");
    assert_eq!(info["parameters"]["Size-1"], "20");
    assert_eq!(info["parameters"]["Clip skip"], "1");
    let (status, error) = post(&server, "/sdapi/v1/png-info", &json!({"image": "bm9wZQ=="}));
    assert_eq!(status, 500);
    assert_eq!(error["detail"], "Invalid encoded image");
    let (_, bare) = post(
        &server,
        "/sdapi/v1/png-info",
        &json!({"image": png(4, 4, None)}),
    );
    assert_eq!(bare["info"], "");

    let body = json!({"image": picture, "upscaler_1": "Lanczos", "upscaling_resize": 2});
    let (status, answer) = post(&server, "/sdapi/v1/extra-single-image/", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["html_info"],
        "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos</p>"
    );
    let (size, texts) = read_png(answer["image"].as_str().unwrap());
    assert_eq!(size, (40, 24));
    assert!(
        texts.contains(&("parameters".into(), infotext.into())),
        "{texts:?}"
    );
    assert!(texts.iter().any(|(k, _)| k == "postprocessing"));

    let to = json!({"image": picture, "upscaler_1": "Nearest", "resize_mode": 1,
        "upscaling_resize_w": 64, "upscaling_resize_h": 64, "upscaling_crop": true});
    let (_, answer) = post(&server, "/sdapi/v1/extra-single-image", &to);
    assert_eq!(read_png(answer["image"].as_str().unwrap()).0, (64, 64));
    let (status, error) = post(
        &server,
        "/sdapi/v1/extra-single-image",
        &json!({"image": picture, "upscaling_resize_w": 0}),
    );
    assert_eq!(status, 422);
    assert_eq!(
        error["detail"][0]["loc"],
        json!(["body", "upscaling_resize_w"])
    );
    let (status, error) = post(
        &server,
        "/sdapi/v1/extra-single-image",
        &json!({"image": picture, "upscaler_1": "ESRGAN_4x"}),
    );
    assert_eq!(status, 500);
    assert_eq!(error["errors"], "could not find upscaler named ESRGAN_4x");

    let batch = json!({"imageList": [{"data": picture, "name": "a"}, {"data": png(8, 8, None), "name": "b"}],
        "upscaler_1": "Nearest", "upscaling_resize": 3});
    let (status, answer) = post(&server, "/sdapi/v1/extra-batch-images", &batch);
    assert_eq!(status, 200, "{answer}");
    let images = answer["images"].as_array().unwrap();
    assert_eq!(read_png(images[0].as_str().unwrap()).0, (56, 32));
    assert_eq!(read_png(images[1].as_str().unwrap()).0, (24, 24));
}
