//! Infotext in PNG files: written as A1111/Pillow do (tEXt, or iTXt for non-Latin-1 text) and
//! read back from our files and from Pillow-written ones.

use crate::common::run_reference;
use sdhost::infotext::Infotext;
use sdhost::pipeline::png_info::{read_png_infotext, save_png};

#[test]
fn infotext_round_trips_through_png_with_pillow() {
    let dir = tempfile::tempdir().unwrap();
    let texts = serde_json::json!({
        "latin1": "a café at dusk, (golden hour:1.2)\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 64x64, Denoising strength: 0.75",
        "unicode": "夕暮れの猫 🐈\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 2, Size: 64x48, Lora hashes: \"add_detail: 7c6bad76eb54\"",
    });
    std::fs::write(dir.path().join("texts.json"), texts.to_string()).unwrap();
    let image = image::RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 99]));
    for (name, text) in texts.as_object().unwrap() {
        let path = dir.path().join(format!("ours_{name}.png"));
        save_png(&path, &image, Some(text.as_str().unwrap())).unwrap();
        assert_eq!(read_png_infotext(&path).unwrap().as_deref(), text.as_str());
        assert_eq!(
            image::open(&path).unwrap().to_rgb8(),
            image,
            "pixels survive"
        );
    }
    run_reference("png_info_reference.py", &[dir.path().as_os_str()]);
    for (name, text) in texts.as_object().unwrap() {
        let read = read_png_infotext(&dir.path().join(format!("pillow_{name}.png"))).unwrap();
        assert_eq!(read.as_deref(), text.as_str(), "{name} written by Pillow");
        let parsed = Infotext::parse(read.as_deref().unwrap());
        assert_eq!(parsed.get("Steps"), Some("20"));
    }
    // No infotext, and a file that is not a PNG.
    let plain = dir.path().join("plain.png");
    save_png(&plain, &image, None).unwrap();
    assert_eq!(read_png_infotext(&plain).unwrap(), None);
    std::fs::write(dir.path().join("fake.png"), b"not a png").unwrap();
    let error = read_png_infotext(&dir.path().join("fake.png"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("fake.png") && error.contains("not a readable PNG"),
        "{error}"
    );
}
