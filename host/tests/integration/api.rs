//! The A1111-compatible HTTP API of `sdhost serve --api-addr` on a tiny model, driven over
//! HTTP: img2img's response shape and infotext, API img2img against CLI img2img with the same
//! parameters (pixel-identical), `/progress` while a job runs, `/interrupt` returning the
//! partial result, A1111's error shapes for bad input with the server serving on, Basic auth
//! and CORS, and the refusal of a public address without auth.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A daemon with the API; killed when dropped.
pub(crate) struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
    pub(crate) model: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sdhost(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sdhost"));
    command
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env("SDHOST_CACHE_DIR", dir.join("cache"));
    command
}

/// Starts `sdhost serve --api-addr 127.0.0.1:0` with a tiny model and `extra` flags (and a
/// config file when given), and reads the address it prints.
pub(crate) fn start(extra: &[&str], config: Option<&str>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), 31);
    let mut command = sdhost(dir.path());
    command
        .args([
            "serve",
            "--threads",
            "1",
            "--api-addr",
            "127.0.0.1:0",
            "--model",
        ])
        .arg(&model)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(text) = config {
        let path = dir.path().join("serve.toml");
        std::fs::write(&path, text).unwrap();
        command.arg("--config").arg(path);
    }
    let mut child = command.spawn().expect("start sdhost serve");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the daemon printed its address")
            .unwrap();
        if let Some(address) = line.strip_prefix("sdhost: A1111 API on ") {
            break address.to_string();
        }
    };
    // Keep reading so that the daemon never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        _dir: dir,
        url,
        model,
    }
}

/// Status, JSON body and headers of a request (any status).
fn call(
    request: ureq::Request,
    body: Option<&[u8]>,
) -> (u16, Value, std::collections::HashMap<String, String>) {
    let result = match body {
        Some(bytes) => request
            .set("Content-Type", "application/json")
            .send_bytes(bytes),
        None => request.call(),
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(other) => panic!("transport error: {other}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|name| Some((name.clone(), response.header(&name)?.to_string())))
        .collect();
    let mut text = String::new();
    response.into_reader().read_to_string(&mut text).unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value, headers)
}

pub(crate) fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let (status, value, _) = call(ureq::post(&format!("{}{path}", server.url)), Some(&bytes));
    (status, value)
}

fn get(server: &Server, path: &str) -> (u16, Value) {
    let (status, value, _) = call(ureq::get(&format!("{}{path}", server.url)), None);
    (status, value)
}

/// A 40x36 RGBA picture with a transparent corner, as a PNG file and as base64.
pub(crate) fn init_picture(dir: &Path) -> (std::path::PathBuf, String) {
    let image = image::RgbaImage::from_fn(40, 36, |x, y| {
        image::Rgba([
            (x * 6) as u8,
            (y * 7) as u8,
            120,
            if x + y < 10 { 0 } else { 255 },
        ])
    });
    let path = dir.join("init.png");
    image.save(&path).unwrap();
    (path.clone(), B64.encode(std::fs::read(&path).unwrap()))
}

/// A returned image: bare base64 of a PNG; its pixels and `parameters` text.
pub(crate) fn decode_png(text: &str) -> (image::RgbImage, Option<String>) {
    assert!(!text.starts_with("data:"), "bare base64");
    let bytes = B64.decode(text).expect("base64");
    let infotext = sdhost::pipeline::png_info::png_text(&bytes, "parameters").unwrap();
    let image = image::load_from_memory(&bytes).unwrap();
    assert!(matches!(image, image::DynamicImage::ImageRgb8(_)), "RGB");
    (image.to_rgb8(), infotext)
}

#[test]
fn img2img_answers_in_a1111s_shape_and_matches_the_cli_pixel_for_pixel() {
    let server = start(&[], None);
    let dir = tempfile::tempdir().unwrap();
    let (init_path, init) = init_picture(dir.path());
    let body = json!({
        "init_images": [format!("data:image/png;base64,{init}")],
        "prompt": "a red house", "negative_prompt": "blurry",
        "steps": "6", "seed": 1234, "cfg_scale": 6, "width": 48.0, "height": 40,
        "denoising_strength": 0.6, "sampler_index": "Euler a", "n_iter": 2,
        "uniqueDocumentId": "ignored", "alwayson_scripts": {"never oom integrated": {"args": [true, true]}},
        "script_name": null, "restore_faces": false,
    });
    let (status, answer) = post(&server, "/sdapi/v1/img2img", &body);
    assert_eq!(status, 200, "{answer}");
    let keys: Vec<&String> = answer.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["images", "info", "parameters"]);
    let parameters = &answer["parameters"];
    assert_eq!(parameters["steps"], 6);
    assert_eq!(
        parameters["init_images"],
        Value::Null,
        "not echoed by default"
    );
    assert_eq!(parameters["sampler_index"], "Euler a");
    assert_eq!(parameters["inpaint_full_res"], true, "API default");
    assert!(parameters.get("uniqueDocumentId").is_none());
    let info_text = answer["info"].as_str().expect("info is a JSON string");
    assert!(info_text.starts_with(r#"{"prompt": "a red house", "all_prompts": ["#));
    let info: Value = serde_json::from_str(info_text).unwrap();
    assert_eq!(info["all_seeds"], json!([1234, 1235]));
    assert_eq!(info["sampler_name"], "Euler a");
    assert_eq!(info["index_of_first_image"], 0);
    assert_eq!(info["version"], "v1.10.1");
    assert_eq!(info["job_timestamp"].as_str().unwrap().len(), 14);
    let images = answer["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "no grid without save_images");
    let infotexts = info["infotexts"].as_array().unwrap();
    let mut api_images = Vec::new();
    for (image, infotext) in images.iter().zip(infotexts) {
        let (pixels, text) = decode_png(image.as_str().unwrap());
        assert_eq!(pixels.dimensions(), (48, 40));
        assert_eq!(
            text.as_deref(),
            infotext.as_str(),
            "PNG carries the infotext"
        );
        api_images.push(pixels);
    }
    assert!(infotexts[1].as_str().unwrap().contains("Seed: 1235"));

    // The same job from the CLI: same pixels, same infotext.
    let out_dir = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_sdhost"))
        .args(["img2img", "--model"])
        .arg(&server.model)
        .arg("--init-image")
        .arg(&init_path)
        .arg("--out-dir")
        .arg(&out_dir)
        .args([
            "--prompt",
            "a red house",
            "--negative-prompt",
            "blurry",
            "--steps",
            "6",
            "--seed",
            "1234",
            "--cfg-scale",
            "6",
            "--width",
            "48",
            "--height",
            "40",
            "--denoising-strength",
            "0.6",
            "--sampler-name",
            "Euler a",
            "--n-iter",
            "2",
            "--randn-source",
            "CPU",
            "--threads",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut files: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    for ((file, api), infotext) in files.iter().zip(&api_images).zip(infotexts) {
        let cli = image::open(file).unwrap().to_rgb8();
        assert_eq!(&cli, api, "API and CLI pixels differ ({})", file.display());
        let text = sdhost::pipeline::png_info::read_png_infotext(file).unwrap();
        assert_eq!(text.as_deref(), infotext.as_str());
    }

    // save_images with two images: the grid leads, its infotext first, seeds unchanged.
    let mut body = body;
    body["save_images"] = json!(true);
    body["include_init_images"] = json!(1);
    let (status, answer) = post(&server, "/sdapi/v1/img2img", &body);
    assert_eq!(status, 200, "{answer}");
    let images = answer["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    let (grid, _) = decode_png(images[0].as_str().unwrap());
    assert_eq!(grid.dimensions(), (96, 40), "round(√2) = 1 row of 2");
    assert_eq!(
        image::GenericImageView::view(&grid, 48, 0, 48, 40).to_image(),
        api_images[1]
    );
    let info: Value = serde_json::from_str(answer["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["index_of_first_image"], 1);
    assert_eq!(info["infotexts"].as_array().unwrap().len(), 3);
    assert_eq!(info["all_seeds"], json!([1234, 1235]));
    assert!(
        answer["parameters"]["init_images"].is_array(),
        "include_init_images"
    );

    // send_images false: no images, the rest as before.
    body["send_images"] = json!("false");
    let (status, answer) = post(&server, "/sdapi/v1/img2img", &body);
    assert_eq!(status, 200);
    assert_eq!(answer["images"], json!([]));
}

#[test]
fn inpainting_takes_every_mask_form_clients_send() {
    let server = start(&[], None);
    let dir = tempfile::tempdir().unwrap();
    let (_, init) = init_picture(dir.path());
    let png = |image: image::DynamicImage| {
        let mut bytes = Vec::new();
        image
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        B64.encode(bytes)
    };
    let inside = |x: u32, y: u32| (10..30).contains(&x) && (8..28).contains(&y);
    // Grey (GIMP channels), opaque RGBA black/white (openOutpaint), RGBA with transparency
    // (GIMP layers: the alpha is the mask): all the same mask.
    let grey = png(image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(
        40,
        36,
        |x, y| image::Luma([if inside(x, y) { 255 } else { 0 }]),
    )));
    let opaque = png(image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(
        40,
        36,
        |x, y| {
            let v = if inside(x, y) { 255 } else { 0 };
            image::Rgba([v, v, v, 255])
        },
    )));
    let alpha = png(image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(
        40,
        36,
        |x, y| image::Rgba([0, 0, 0, if inside(x, y) { 255 } else { 0 }]),
    )));
    let mut results = Vec::new();
    for mask in [
        grey.clone(),
        format!("data:image/png;base64,{opaque}"),
        alpha,
    ] {
        let body = json!({
            "init_images": [init], "mask": mask, "steps": 3, "seed": 5,
            "width": 40, "height": 36, "inpainting_mask_invert": false,
            "inpainting_fill": "1", "inpaint_full_res": 0,
        });
        let (status, answer) = post(&server, "/sdapi/v1/img2img", &body);
        assert_eq!(status, 200, "{answer}");
        results.push(decode_png(answer["images"][0].as_str().unwrap()).0);
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
    // "" is no mask at all (openOutpaint): plain img2img, other pixels.
    let body = json!({"init_images": [init], "mask": "", "steps": 3, "seed": 5, "width": 40, "height": 36});
    let (status, answer) = post(&server, "/sdapi/v1/img2img", &body);
    assert_eq!(status, 200, "{answer}");
    assert_ne!(
        decode_png(answer["images"][0].as_str().unwrap()).0,
        results[0]
    );
}

#[test]
fn progress_rises_during_a_job_and_interrupt_returns_the_partial_result() {
    let server = start(&[], None);
    let (status, idle) = get(&server, "/sdapi/v1/progress");
    assert_eq!(status, 200);
    assert_eq!(idle["progress"], 0.0);
    assert_eq!(idle["state"]["job_count"], 0);
    assert_eq!(idle["current_image"], Value::Null);
    let keys: Vec<&String> = idle["state"].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 9);

    let dir = tempfile::tempdir().unwrap();
    let (_, init) = init_picture(dir.path());
    let url = server.url.clone();
    let job = std::thread::spawn(move || {
        let body = json!({
            "init_images": [init], "steps": 60, "denoising_strength": 1.0, "seed": 9,
            "width": 64, "height": 64, "n_iter": 4,
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        let (status, answer, _) =
            call(ureq::post(&format!("{url}/sdapi/v1/img2img")), Some(&bytes));
        (status, answer)
    });
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut preview = None;
    loop {
        let (status, answer) = get(&server, "/sdapi/v1/progress");
        assert_eq!(status, 200);
        if answer["state"]["job_count"] != 0 {
            let progress = answer["progress"].as_f64().unwrap();
            assert!(progress > 0.0, "running shows more than 0: {answer}");
            seen.push(progress);
            if let Some(image) = answer["current_image"].as_str() {
                preview = Some(image.to_string());
            }
            // Interrupt in the second batch, once a preview was shown.
            if answer["state"]["job_no"] == 1 && preview.is_some() {
                let (status, reply, _) = call(
                    ureq::post(&format!("{}/sdapi/v1/interrupt", server.url)),
                    None,
                );
                assert_eq!((status, reply), (200, json!({})));
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no second batch seen"
        );
        std::thread::sleep(Duration::from_millis(15));
    }
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "monotonic: {seen:?}");
    let (width, _) = {
        let bytes = B64.decode(preview.unwrap()).unwrap();
        let image = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap();
        (image.width(), image.height())
    };
    assert!(width > 0);
    let (status, answer) = job.join().unwrap();
    assert_eq!(status, 200, "an interrupted job still answers: {answer}");
    let images = answer["images"].as_array().unwrap();
    // The finished batch and the interrupted one (decoded from its last prediction), not
    // the later ones.
    assert!(
        (2..4).contains(&images.len()),
        "partial: {} images",
        images.len()
    );
    let info: Value = serde_json::from_str(answer["info"].as_str().unwrap()).unwrap();
    assert_eq!(
        info["all_seeds"],
        json!([9, 10, 11, 12]),
        "every planned seed"
    );
    let (_, idle) = get(&server, "/sdapi/v1/progress?skip_current_image=true");
    assert_eq!(idle["progress"], 0.0);
    assert_eq!(idle["state"]["job_count"], 0);
    assert_eq!(
        idle["state"]["interrupted"], true,
        "stays set until the next job"
    );
    let (status, _) = get(&server, "/sdapi/v1/progress?skip_current_image=maybe");
    assert_eq!(status, 422);
    let (status, reply, _) = call(
        ureq::post(&format!("{}/sdapi/v1/skip", server.url)),
        Some(b""),
    );
    assert_eq!((status, reply), (200, Value::Null));
}

#[test]
fn bad_input_gets_a1111_error_shapes_and_the_server_keeps_serving() {
    let server = start(
        &[],
        Some("[limits]\nmax_frame_bytes = 200000\nmax_pixels = 10000\n"),
    );
    let url = |path: &str| format!("{}{path}", server.url);
    let raw = |path: &str, bytes: &[u8]| {
        let (status, value, _) = call(ureq::post(&url(path)), Some(bytes));
        (status, value)
    };
    let (status, body) = raw("/sdapi/v1/img2img", b"{not json");
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["type"], "value_error.jsondecode");
    let (status, body) = raw("/sdapi/v1/img2img", b"[1, 2]");
    assert_eq!(status, 422, "{body}");
    let (status, body) = post(
        &server,
        "/sdapi/v1/img2img",
        &json!({"steps": "many", "seed": [1]}),
    );
    assert_eq!(status, 422);
    assert_eq!(
        body["detail"][0],
        json!({"loc": ["body", "seed"], "msg": "value is not a valid integer", "type": "type_error.integer"})
    );
    assert_eq!(body["detail"][1]["loc"], json!(["body", "steps"]));
    let (status, body) = post(
        &server,
        "/sdapi/v1/img2img",
        &json!({"init_images": ["bm90IGFuIGltYWdl"]}),
    );
    assert_eq!(status, 500);
    assert_eq!(
        body,
        json!({"error": "HTTPException", "detail": "Invalid encoded image", "body": "", "errors": ""})
    );
    let (status, body) = post(&server, "/sdapi/v1/img2img", &json!({"init_images": null}));
    assert_eq!(
        (status, body["detail"].as_str()),
        (404, Some("Init image not found"))
    );
    let dir = tempfile::tempdir().unwrap();
    let (_, init) = init_picture(dir.path());
    let (status, body) = post(
        &server,
        "/sdapi/v1/img2img",
        &json!({"script_name": "no such script", "init_images": [init]}),
    );
    assert_eq!(
        (status, body["detail"].as_str()),
        (422, Some("Script 'no such script' not found"))
    );
    // A body over the limit, and an image over the pixel limit (checked from its header).
    let huge = vec![b' '; 300_000];
    let (status, body) = raw("/sdapi/v1/img2img", &huge);
    assert_eq!(status, 413, "{body}");
    let mut big = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::new(200, 100))
        .write_to(&mut std::io::Cursor::new(&mut big), image::ImageFormat::Png)
        .unwrap();
    let (status, body) = post(
        &server,
        "/sdapi/v1/img2img",
        &json!({"init_images": [B64.encode(&big)]}),
    );
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "HTTPException");
    for path in [
        "/sdapi/v1/nothing",
        "/controlnet/version",
        "/sdapi/v1/txt2img/script",
    ] {
        assert_eq!(get(&server, path), (404, json!({"detail": "Not Found"})));
        assert_eq!(
            post(&server, path, &json!({})),
            (404, json!({"detail": "Not Found"}))
        );
    }
    assert_eq!(
        get(&server, "/sdapi/v1/img2img"),
        (405, json!({"detail": "Method Not Allowed"}))
    );
    // Trailing slashes reach the route (openOutpaint posts to "…/options/").
    let (status, _) = get(&server, "/sdapi/v1/progress/");
    assert_eq!(status, 200);
    let (status, _) = post(&server, "/sdapi/v1/interrupt/", &json!({}));
    assert_eq!(status, 200);
    // Still serving jobs.
    let (status, answer) = post(
        &server,
        "/sdapi/v1/img2img",
        &json!({"init_images": [init], "steps": 2, "width": 40, "height": 40}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["images"].as_array().unwrap().len(), 1);
}

#[test]
fn basic_auth_cors_and_public_addresses() {
    let server = start(
        &[
            "--api-auth",
            "ann:s3cret,bob:pw",
            "--cors-allow-origins",
            "http://app.example",
        ],
        None,
    );
    let url = format!("{}/sdapi/v1/progress", server.url);
    let basic = |pair: &str| format!("Basic {}", B64.encode(pair));
    let (status, body, _) = call(ureq::get(&url), None);
    assert_eq!(
        (status, body),
        (
            401,
            json!({"error": "HTTPException", "detail": "Not authenticated", "body": "", "errors": ""})
        )
    );
    let (status, body, _) = call(
        ureq::get(&url).set("Authorization", &basic("ann:wrong")),
        None,
    );
    assert_eq!(
        (status, body["detail"].as_str()),
        (401, Some("Incorrect username or password"))
    );
    let (status, _, _) = call(ureq::get(&url).set("Authorization", &basic("bob:pw")), None);
    assert_eq!(status, 200);
    let (status, _, headers) = call(
        ureq::get(&url)
            .set("Authorization", &basic("ann:s3cret"))
            .set("Origin", "http://app.example"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("http://app.example")
    );
    // A preflight needs no credentials; another origin gets no CORS headers.
    let preflight = |origin: &str| {
        ureq::request("OPTIONS", &url)
            .set("Origin", origin)
            .set("Access-Control-Request-Method", "POST")
            .call()
            .unwrap_or_else(|e| match e {
                ureq::Error::Status(_, response) => response,
                other => panic!("{other}"),
            })
    };
    let allowed = preflight("http://app.example");
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    assert_eq!(
        allowed.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        preflight("http://evil.example").header("access-control-allow-origin"),
        None
    );

    // Listening beyond this machine without credentials is refused at start.
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), 31);
    let output = sdhost(dir.path())
        .args(["serve", "--api-addr", "0.0.0.0:0", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--api-auth"), "{stderr}");
}

#[test]
fn override_settings_switch_the_checkpoint_and_unknown_ones_are_ignored() {
    let models = tempfile::tempdir().unwrap();
    let other = common::tiny_model(models.path(), 32);
    let other_name = other.file_stem().unwrap().to_string_lossy().into_owned();
    let server = start(&["--models-dir", models.path().to_str().unwrap()], None);
    let dir = tempfile::tempdir().unwrap();
    let (_, init) = init_picture(dir.path());
    let model_of = |answer: &Value| {
        let info: Value = serde_json::from_str(answer["info"].as_str().unwrap()).unwrap();
        info["sd_model_name"].as_str().unwrap().to_string()
    };
    let job = |settings: Value| {
        let body = json!({
            "init_images": [init], "steps": 2, "width": 40, "height": 40,
            "override_settings": settings,
        });
        let (status, answer) = post(&server, "/sdapi/v1/img2img", &body);
        assert_eq!(status, 200, "{answer}");
        answer
    };
    let first = model_of(&job(json!({})));
    assert_ne!(first, other_name);
    let title = format!("{}.safetensors [0123456789]", other_name);
    let switched = job(json!({"sd_model_checkpoint": title, "CLIP_stop_at_last_layers": 2}));
    assert_eq!(model_of(&switched), other_name);
    let infotext = switched["images"][0]
        .as_str()
        .map(decode_png)
        .unwrap()
        .1
        .unwrap();
    assert!(infotext.contains("Clip skip: 2"), "{infotext}");
    // The overriding model stays loaded; an unknown one changes nothing and fails nothing.
    assert_eq!(model_of(&job(json!({}))), other_name);
    assert_eq!(
        model_of(&job(json!({"sd_model_checkpoint": "no such model"}))),
        other_name
    );
}

#[test]
fn skip_ends_the_running_batch_early_and_the_job_goes_on() {
    let server = start(&[], None);
    let dir = tempfile::tempdir().unwrap();
    let (_, init) = init_picture(dir.path());
    let body = json!({
        "init_images": [init], "steps": 80, "denoising_strength": 1.0, "seed": 3,
        "width": 64, "height": 64, "n_iter": 2,
    });
    let url = server.url.clone();
    let job = {
        let body = body.clone();
        std::thread::spawn(move || {
            let bytes = serde_json::to_vec(&body).unwrap();
            let (status, answer, _) =
                call(ureq::post(&format!("{url}/sdapi/v1/img2img")), Some(&bytes));
            (status, answer)
        })
    };
    let start = Instant::now();
    loop {
        let (_, answer) = get(&server, "/sdapi/v1/progress?skip_current_image=true");
        let state = &answer["state"];
        if state["job_count"] != 0
            && state["job_no"] == 0
            && state["sampling_step"].as_u64() > Some(3)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the job did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, reply, _) = call(ureq::post(&format!("{}/sdapi/v1/skip", server.url)), None);
    assert_eq!((status, reply), (200, Value::Null));
    let (status, skipped) = job.join().unwrap();
    assert_eq!(status, 200, "{skipped}");
    assert_eq!(
        skipped["images"].as_array().unwrap().len(),
        2,
        "the job went on"
    );
    // The second batch ran in full: the same pixels as the same job unskipped.
    let (status, full) = post(&server, "/sdapi/v1/img2img", &body);
    assert_eq!(status, 200);
    let second = |answer: &Value| decode_png(answer["images"][1].as_str().unwrap()).0;
    let first = |answer: &Value| decode_png(answer["images"][0].as_str().unwrap()).0;
    assert_eq!(second(&skipped), second(&full));
    assert_ne!(
        first(&skipped),
        first(&full),
        "the skipped batch stopped early"
    );
}

#[test]
fn txt2img_with_hires_fix_matches_the_cli_pixel_for_pixel() {
    let server = start(&[], None);
    let body = json!({
        "prompt": "a lighthouse", "negative_prompt": "fog", "steps": 5, "seed": "77",
        "width": 48, "height": 40, "cfg_scale": 5.5, "sampler_name": "DPM++ 2M Karras",
        "scheduler": null, "batch_size": 2, "enable_hr": true, "hr_scale": 1.5,
        "hr_upscaler": "Latent", "hr_second_pass_steps": 3, "denoising_strength": 0.6,
        "firstphase_width": 0, "hr_checkpoint_name": null, "save_images": true,
        "init_images": ["ignored on txt2img"],
    });
    let (status, answer) = post(&server, "/sdapi/v1/txt2img", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["parameters"]["enable_hr"], true);
    assert!(
        answer["parameters"].get("init_images").is_none(),
        "not a txt2img field"
    );
    let info: Value = serde_json::from_str(answer["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"], json!([77, 78]));
    assert_eq!(info["sampler_name"], "DPM++ 2M");
    assert_eq!(info["index_of_first_image"], 1, "a grid of the two");
    let images = answer["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    let api: Vec<_> = images[1..]
        .iter()
        .map(|i| decode_png(i.as_str().unwrap()))
        .collect();
    assert_eq!(
        api[0].0.dimensions(),
        (72, 56),
        "the hires size, 8·⌊side/8⌋"
    );
    assert!(api[0].1.as_deref().unwrap().contains("Hires upscale: 1.5"));

    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_sdhost"))
        .args(["txt2img", "--model"])
        .arg(&server.model)
        .arg("--out-dir")
        .arg(&out_dir)
        .args([
            "--prompt",
            "a lighthouse",
            "--negative-prompt",
            "fog",
            "--steps",
            "5",
            "--seed",
            "77",
            "--width",
            "48",
            "--height",
            "40",
            "--cfg-scale",
            "5.5",
            "--sampler-name",
            "DPM++ 2M",
            "--scheduler",
            "Karras",
            "--batch-size",
            "2",
            "--enable-hr",
            "true",
            "--hr-scale",
            "1.5",
            "--hr-upscaler",
            "Latent",
            "--hr-second-pass-steps",
            "3",
            "--denoising-strength",
            "0.6",
            "--randn-source",
            "CPU",
            "--threads",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut files: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    for (file, (pixels, infotext)) in files.iter().zip(&api) {
        assert_eq!(
            &image::open(file).unwrap().to_rgb8(),
            pixels,
            "{}",
            file.display()
        );
        let text = sdhost::pipeline::png_info::read_png_infotext(file).unwrap();
        assert_eq!(&text, infotext);
    }
}
