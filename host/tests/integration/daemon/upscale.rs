//! The daemon's `upscale` request with the real daemon: `list`'s upscalers, Lanczos by a scale
//! with the picture's alpha kept, a tiny ESRGAN to cover a size (the same pixels as the
//! library's extras upscale), an unusable model file, refusals before any work (unknown
//! names, bad scales, a result over the pixel limit) and a cancel between a model's tiles.

use std::path::Path;
use std::sync::{Arc, Mutex};

use image::{Rgb, RgbImage, RgbaImage};
use sdhost::daemon::protocol::{Attachment, Frame, PixelFormat};
use sdhost::prepare::resample::{resize, Filter};
use sdhost::prepare::upscalers::PixelUpscaler;
use sdhost::upscale::{ReadyUpscaler, TileSettings, UpscalerClass, UpscalerModel};
use serde_json::{json, Value};

use super::{start_daemon, Client, Daemon};
use crate::cli::pixels;
use crate::upscalers::{models_tree, reference};

fn rgba_attachment(image: &RgbaImage) -> (Attachment, Vec<u8>) {
    (
        Attachment {
            name: "image".into(),
            format: PixelFormat::Rgba8,
            width: image.width(),
            height: image.height(),
            length: image.as_raw().len() as u64,
        },
        image.as_raw().clone(),
    )
}

/// A daemon serving the upscaler tests' models folder (`tiny_esrgan` among them).
fn daemon_with_upscalers(root: &Path) -> Daemon {
    let models = models_tree(root);
    start_daemon(&["--models-dir", models.to_str().unwrap()], None)
}

/// Queues `header` with `image`; the job's frames from `started` to its last.
fn upscale_job(client: &mut Client, header: Value, image: &RgbaImage) -> Vec<Frame> {
    let id = client.send(header, &[rgba_attachment(image)]);
    let queued = client.answer(id).header;
    assert_eq!(queued["type"], "queued", "{queued}");
    let job = queued["job"].clone();
    let mut frames = Vec::new();
    loop {
        let frame = client.read();
        if frame.header["job"] != job {
            continue;
        }
        let kind = frame.header["type"].as_str().unwrap().to_string();
        frames.push(frame);
        if ["done", "cancelled", "error"].contains(&kind.as_str()) {
            return frames;
        }
    }
}

/// The one `result`'s header and picture, checking the job ended with `done`.
fn upscaled(frames: &[Frame]) -> (Value, RgbaImage) {
    let types: Vec<&str> = frames
        .iter()
        .map(|f| f.header["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["started", "result", "done"], "{:?}", frames.last());
    assert_eq!(frames[2].header["images"], 1);
    let result = &frames[1];
    let (attachment, bytes) = &result.attachments[0];
    assert_eq!(
        (attachment.name.as_str(), attachment.format),
        ("image", PixelFormat::Rgba8)
    );
    let image = RgbaImage::from_raw(attachment.width, attachment.height, bytes.clone()).unwrap();
    (result.header.clone(), image)
}

fn rgb_of(image: &RgbaImage) -> RgbImage {
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let p = image.get_pixel(x, y);
        Rgb([p[0], p[1], p[2]])
    })
}

#[test]
fn lanczos_and_a_tiny_esrgan_upscale_as_the_extras_do() {
    let root = tempfile::tempdir().unwrap();
    let daemon = daemon_with_upscalers(root.path());
    let mut client = Client::connected(&daemon.socket);
    let id = client.send(json!({"type": "list"}), &[]);
    assert_eq!(
        client.answer(id).header["upscalers"],
        json!([
            "None",
            "Lanczos",
            "Nearest",
            "not_an_upscaler",
            "R-ESRGAN 2x+",
            "tiny_compact",
            "tiny_esrgan",
            "tiny_swinir"
        ])
    );

    // Lanczos by 2, a picture with a transparent left half: 23×18 → 40×32 (multiples of 8).
    let input = pixels(&reference().join("tile_input.png"));
    let with_alpha = RgbaImage::from_fn(23, 18, |x, y| {
        let p = input.get_pixel(x, y);
        image::Rgba([p[0], p[1], p[2], if x < 12 { 0 } else { 255 }])
    });
    let frames = upscale_job(
        &mut client,
        json!({"type": "upscale", "upscaler": "Lanczos", "scale": 2}),
        &with_alpha,
    );
    let (header, out) = upscaled(&frames);
    assert_eq!(
        (header["index"].clone(), header["seed"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(
        header["infotext"],
        "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"
    );
    assert_eq!(out.dimensions(), (40, 32));
    assert_eq!(rgb_of(&out), PixelUpscaler::Lanczos.upscale(&input, 2.0));
    let alpha = RgbImage::from_fn(23, 18, |x, _| {
        let a = if x < 12 { 0 } else { 255 };
        Rgb([a, a, a])
    });
    let alpha = resize(&alpha, 40, 32, Filter::Lanczos, None);
    assert!(out
        .enumerate_pixels()
        .all(|(x, y, p)| p[3] == alpha.get_pixel(x, y)[0]));
    assert_eq!((out.get_pixel(0, 0)[3], out.get_pixel(39, 0)[3]), (0, 255));

    // The tiny ESRGAN to cover 60×40: scale 60/23, 60×46.96 rounded down to 56×40; alpha 255.
    let opaque = image::DynamicImage::ImageRgb8(input.clone()).to_rgba8();
    let frames = upscale_job(
        &mut client,
        json!({"type": "upscale", "upscaler": "tiny_esrgan", "width": 60, "height": 40}),
        &opaque,
    );
    let (header, out) = upscaled(&frames);
    assert_eq!(
        header["infotext"],
        "Postprocess upscale to: 60x40, Postprocess upscaler: tiny_esrgan"
    );
    assert_eq!(out.dimensions(), (56, 40));
    assert!(out.pixels().all(|p| p[3] == 255));
    let model = UpscalerModel::load(
        &root.path().join("models/ESRGAN/tiny_esrgan.pth"),
        tch::Device::Cpu,
    )
    .unwrap();
    let expected = ReadyUpscaler::Model {
        model: Arc::new(Mutex::new(model)),
        class: UpscalerClass::Esrgan,
        tiles: TileSettings::default(),
    }
    .upscale(&input, 60.0 / 23.0);
    assert_eq!(rgb_of(&out), expected);

    // A file in the folder that is no upscaler: the job fails, the daemon goes on.
    let frames = upscale_job(
        &mut client,
        json!({"type": "upscale", "upscaler": "not_an_upscaler"}),
        &opaque,
    );
    let error = &frames.last().unwrap().header;
    assert_eq!(error["code"], "model_load_failed", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not an upscaler model"),
        "{error}"
    );
}

#[test]
fn unknown_upscalers_and_bad_scales_are_refused_and_a_cancel_stops_the_tiles() {
    let root = tempfile::tempdir().unwrap();
    let daemon = daemon_with_upscalers(root.path());
    let mut client = Client::connected(&daemon.socket);
    let small = RgbaImage::from_pixel(16, 16, image::Rgba([10, 20, 30, 255]));
    let mut refusal = |header: Value, image: &RgbaImage| {
        let id = client.send(header, &[rgba_attachment(image)]);
        let answer = client.answer(id).header;
        assert_eq!(answer["type"], "error", "{answer}");
        assert!(answer["job"].is_null(), "refused before queueing: {answer}");
        (
            answer["code"].as_str().unwrap().to_string(),
            answer["message"].as_str().unwrap().to_string(),
        )
    };
    let (code, message) = refusal(
        json!({"type": "upscale", "upscaler": "4x-UltraSharp"}),
        &small,
    );
    assert_eq!(code, "invalid_params");
    assert!(
        message.contains("no upscaler \"4x-UltraSharp\"")
            && message.contains("None, Lanczos, Nearest, not_an_upscaler"),
        "{message}"
    );
    for scale in [json!(0), json!(-2), json!(8.5)] {
        let header = json!({"type": "upscale", "upscaler": "Lanczos", "scale": scale});
        let (code, message) = refusal(header, &small);
        assert_eq!(code, "invalid_params", "{scale}: {message}");
        assert!(message.contains("scale"), "{message}");
    }
    let (code, message) = refusal(
        json!({"type": "upscale", "upscaler": "Lanczos", "scale": "big"}),
        &small,
    );
    assert_eq!(code, "bad_request", "{message}");
    // 1024² by 8 is 8192², more than the default limit of 4096² pixels.
    let large = RgbaImage::from_pixel(1024, 1024, image::Rgba([1, 2, 3, 255]));
    let (code, message) = refusal(
        json!({"type": "upscale", "upscaler": "tiny_esrgan", "scale": 8}),
        &large,
    );
    assert_eq!(code, "limit", "{message}");
    assert!(message.contains("8192x8192"), "{message}");

    // The tiny ESRGAN over 1024² runs 36 tiles of 192; a cancel once it started stops it.
    let id = client.send(
        json!({"type": "upscale", "upscaler": "tiny_esrgan", "scale": 2}),
        &[rgba_attachment(&large)],
    );
    let job = client.answer(id).header["job"].clone();
    let mut cancel_sent = false;
    loop {
        let event = client.read().header;
        if event["job"] != job {
            continue;
        }
        match event["type"].as_str().unwrap() {
            "started" if !cancel_sent => {
                client.send(json!({"type": "cancel", "job": job}), &[]);
                cancel_sent = true;
            }
            "cancelled" => {
                assert_eq!(event["images"], 0);
                break;
            }
            _ => panic!("unexpected {event}"),
        }
    }
    client.send(json!({"type": "ping"}), &[]);
    assert_eq!(client.read().header["type"], "pong");
}
