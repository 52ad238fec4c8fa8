//! The one generation request through every front end: each field of `GenerationRequest`
//! (enumerated from its schema, so a new field is caught here) set to a value that is not its
//! default arrives unchanged through the daemon's `params` object, the CLI's flags and an
//! image's infotext. `EXAMPLES` is the one line a new field adds.

use image::RgbaImage;
use sdhost::cli::request_flags::RequestFlags;
use sdhost::daemon::protocol::{Attachment, Frame, PixelFormat};
use sdhost::daemon::request::{parse_request, Request};
use sdhost::infotext::Infotext;
use sdhost::request::{GenerationRequest, HiresFacts, ImageFacts, InvalidRequest};
use serde_json::{json, Map, Value};

/// One value per request field, different from A1111's UI default, as JSON.
const EXAMPLES: &[(&str, &str)] = &[
    ("prompt", r#""a (red:1.2) cat, [sofa:chair:0.5]""#),
    ("negative_prompt", r#""blurry, lowres""#),
    ("resize_mode", "2"),
    ("width", "96"),
    ("height", "64"),
    ("sampler_name", r#""Euler a""#),
    ("scheduler", r#""Karras""#),
    ("steps", "13"),
    ("denoising_strength", "0.45"),
    ("img2img_fix_steps", "true"),
    ("sigma_min", "0.1"),
    ("sigma_max", "10.5"),
    ("rho", "5.5"),
    ("beta_dist_alpha", "0.5"),
    ("beta_dist_beta", "0.7"),
    ("always_discard_next_to_last_sigma", "true"),
    ("use_old_karras_scheduler_sigmas", "true"),
    ("sampler_options", r#"{"eta": 0.5}"#),
    ("cfg_scale", "6.5"),
    ("seed", "1234"),
    ("subseed", "99"),
    ("subseed_strength", "0.25"),
    ("seed_resize_from_w", "640"),
    ("seed_resize_from_h", "448"),
    ("n_iter", "3"),
    ("batch_size", "2"),
    ("clip_skip", "2"),
    ("randn_source", r#""NV""#),
    ("init_latent", r#""mean""#),
    ("initial_noise_multiplier", "0.9"),
    ("img2img_extra_noise", "0.25"),
    ("token_merging_ratio", "0.3"),
    ("token_merging_ratio_img2img", "0.6"),
    ("token_merging_ratio_hr", "0.4"),
    ("eta_noise_seed_delta", "31337"),
    ("mask_blur_x", "3"),
    ("mask_blur_y", "5"),
    ("inpainting_mask_invert", "true"),
    ("inpainting_fill", "2"),
    ("inpaint_full_res", "true"),
    ("inpaint_full_res_padding", "12"),
    ("inpaint_min_context", "[512, 384]"),
    ("inpainting_mask_weight", "0.6"),
    ("mask_round", "false"),
    ("mask_alpha", "40.0"),
    ("img2img_color_correction", "true"),
    ("vae_tiling", "true"),
    ("sd_vae", r#""kl-f8-anime2.safetensors""#),
    ("refiner_checkpoint", r#""sd_xl_refiner_1.0 [7440042bbd]""#),
    ("refiner_switch_at", "0.65"),
    ("enable_hr", "true"),
    ("hr_scale", "1.5"),
    ("hr_upscaler", r#""Latent (bicubic)""#),
    ("hr_second_pass_steps", "7"),
    ("hr_resize_x", "640"),
    ("hr_resize_y", "480"),
    ("hr_sampler_name", r#""Euler""#),
    ("hr_scheduler", r#""Karras""#),
    ("hr_prompt", r#""a big cat""#),
    ("hr_negative_prompt", r#""blurry, small""#),
];

/// Whether a field is one of Hires. fix's, which only a txt2img infotext carries.
fn is_hires_field(name: &str) -> bool {
    name == "enable_hr" || name.starts_with("hr_") || name == "token_merging_ratio_hr"
}

fn examples() -> Vec<(&'static str, Value)> {
    EXAMPLES
        .iter()
        .map(|(name, json)| (*name, serde_json::from_str(json).expect("example is JSON")))
        .collect()
}

fn one(name: &str, value: &Value) -> Map<String, Value> {
    Map::from_iter([(name.to_string(), value.clone())])
}

/// The daemon's base for an image of `w`×`h`: A1111's UI defaults at the image's size.
fn daemon_base(w: u32, h: u32) -> GenerationRequest {
    GenerationRequest {
        width: w,
        height: h,
        ..GenerationRequest::ui_defaults()
    }
}

#[test]
fn every_field_has_an_example_that_differs_from_its_default() {
    let names: Vec<&str> = GenerationRequest::fields()
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    for name in &names {
        assert!(
            EXAMPLES.iter().any(|(n, _)| n == name),
            "request field \"{name}\" has no line in EXAMPLES"
        );
    }
    let defaults = GenerationRequest::ui_defaults();
    for (name, value) in examples() {
        assert!(names.contains(&name), "EXAMPLES names no field \"{name}\"");
        let set = defaults.overlay(&one(name, &value)).unwrap();
        assert_ne!(set, defaults, "{name}: the example is the default");
        assert_eq!(set.to_object()[name], value, "{name}: JSON round trip");
        let again: GenerationRequest =
            serde_json::from_value(Value::Object(set.to_object())).unwrap();
        assert_eq!(again, set, "{name}: serde round trip");
        assert!(!GenerationRequest::fields()
            .iter()
            .find(|f| f.name == name)
            .unwrap()
            .description
            .is_empty());
    }
}

#[test]
fn every_field_arrives_through_the_daemon_params() {
    let image = RgbaImage::from_pixel(40, 24, image::Rgba([10, 20, 30, 255]));
    for (name, value) in examples() {
        let frame = Frame {
            header: json!({"type": "img2img", "id": 1, "params": {name: value},
                "attachments": [{"name": "image", "format": "rgba8", "width": 40, "height": 24,
                "length": image.len()}]}),
            attachments: vec![(
                Attachment {
                    name: "image".into(),
                    format: PixelFormat::Rgba8,
                    width: 40,
                    height: 24,
                    length: image.len() as u64,
                },
                image.as_raw().clone(),
            )],
        };
        let envelope = parse_request(frame).expect("request parses");
        let Request::Img2img(header) = envelope.request else {
            panic!("not an img2img request")
        };
        let generate = header
            .into_job(envelope.attachments, 1 << 24)
            .expect("the job is accepted");
        let expected = daemon_base(40, 24).overlay(&one(name, &value)).unwrap();
        assert_eq!(generate.params, expected, "{name} through the daemon");
    }
}

#[test]
fn every_field_arrives_through_the_cli_flags() {
    let command = <RequestFlags as clap::Args>::augment_args(clap::Command::new("img2img"));
    for (name, value) in examples() {
        let text = match &value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let flag = format!("--{}", name.replace('_', "-"));
        let matches = command
            .clone()
            .try_get_matches_from(["img2img", flag.as_str(), text.as_str()])
            .unwrap_or_else(|e| panic!("{flag} {text}: {e}"));
        let flags = <RequestFlags as clap::FromArgMatches>::from_arg_matches(&matches).unwrap();
        let defaults = GenerationRequest::ui_defaults();
        assert_eq!(
            defaults.overlay(&flags.changes).unwrap(),
            defaults.overlay(&one(name, &value)).unwrap(),
            "{flag} {text}"
        );
    }
    // Switches alone mean true; older names still work.
    let matches = command
        .try_get_matches_from([
            "img2img",
            "--inpaint-full-res",
            "--sampler",
            "Euler",
            "--batch-count",
            "2",
        ])
        .unwrap();
    let flags = <RequestFlags as clap::FromArgMatches>::from_arg_matches(&matches).unwrap();
    let request = GenerationRequest::ui_defaults()
        .overlay(&flags.changes)
        .unwrap();
    assert!(request.inpaint.only_masked);
    assert_eq!(request.sampler.sampler, "Euler");
    assert_eq!(request.n_iter, 2);
}

#[test]
fn every_field_of_one_image_survives_its_infotext() {
    let registry = crate::common::builtin_registry();
    let mut everything = Map::new();
    for (name, value) in examples() {
        everything.insert(name.to_string(), value);
    }
    for request in [
        GenerationRequest::ui_defaults(),
        GenerationRequest::ui_defaults()
            .overlay(&everything)
            .unwrap(),
    ] {
        let found = registry.find(&request.sampler.sampler).expect("sampler");
        let facts = ImageFacts {
            seed: request.seed.max(0) as u64,
            subseed: request.subseed.max(0) as u64,
            sampler: found.info,
            schedule_label: request.sampler.schedule.label(),
            discard_penultimate: request.sampler.schedule_options.discard_penultimate,
            model: ("tiny", "0123456789"),
            // A named VAE is an external one in the job, so the infotext names it.
            vae: (!matches!(request.sd_vae.as_str(), "Automatic" | "None"))
                .then_some((request.sd_vae.as_str(), "735e4c3a44")),
            ti_hashes: None,
            lora_hashes: Some("detail: 0123456789ab".into()),
            // The refiner took over when one is named; its short title is what comes back.
            refiner: (!request.refiner_checkpoint.is_empty())
                .then(|| request.refiner_checkpoint.clone()),
            inpainting: true,
            inpainting_conditioning: true,
            txt2img: None,
        };
        let text = request.infotext(&facts).to_text();
        let parsed = Infotext::parse(&text);
        let mut back = GenerationRequest::ui_defaults();
        let problems = back.apply_infotext(&parsed);
        assert!(problems.is_empty(), "{problems:?} in {text}");
        back.apply_sampler_options(&parsed, found.info);
        let (sent, read) = (request.to_object(), back.to_object());
        for field in GenerationRequest::fields() {
            let name = field.name.as_str();
            if sdhost::request::JOB_SHAPE_FIELDS.contains(&name) || is_hires_field(name) {
                continue;
            }
            // The seeds an image's infotext has are the image's own (-1 picks one); the
            // variation seed is written only with a variation strength, as A1111 does.
            // `Token merging ratio` is the ratio the image was made with (img2img's own when
            // set), as A1111 writes it; it comes back as the ratio, img2img's cleared.
            let wanted = match name {
                "seed" => json!(facts.seed),
                "subseed" if request.subseed_strength != 0.0 => json!(facts.subseed),
                "token_merging_ratio" => json!(request.token_merging_ratio(false)),
                "token_merging_ratio_img2img" => json!(0.0),
                _ => sent[name].clone(),
            };
            assert_eq!(read[name], wanted, "{name} through the infotext:\n{text}");
        }
    }
}

#[test]
fn every_hires_field_survives_a_txt2img_infotext() {
    let registry = crate::common::builtin_registry();
    let hires: Map<String, Value> = examples()
        .into_iter()
        .filter(|(name, _)| is_hires_field(name))
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    let resized = GenerationRequest::ui_defaults().overlay(&hires).unwrap();
    let mut scaled = hires.clone();
    scaled.insert("hr_resize_x".into(), json!(0));
    scaled.insert("hr_resize_y".into(), json!(0));
    let scaled = GenerationRequest::ui_defaults().overlay(&scaled).unwrap();
    for request in [GenerationRequest::ui_defaults(), resized, scaled] {
        let found = registry.find(&request.sampler.sampler).expect("sampler");
        let hires = request.hires.enable_hr.then(|| HiresFacts {
            schedule_label: request.hires.hr_scheduler.clone(),
        });
        let facts = ImageFacts {
            seed: 1,
            subseed: 2,
            sampler: found.info,
            schedule_label: request.sampler.schedule.label(),
            discard_penultimate: false,
            model: ("tiny", "0123456789"),
            vae: None,
            ti_hashes: None,
            lora_hashes: None,
            refiner: None,
            inpainting: false,
            inpainting_conditioning: false,
            txt2img: Some(hires),
        };
        let text = request.infotext(&facts).to_text();
        assert_eq!(
            text.contains("Denoising strength"),
            request.hires.enable_hr,
            "txt2img writes the strength only for Hires. fix: {text}"
        );
        let mut back = GenerationRequest::ui_defaults();
        let problems = back.apply_infotext(&Infotext::parse(&text));
        assert!(problems.is_empty(), "{problems:?} in {text}");
        let (sent, read) = (request.to_object(), back.to_object());
        let resize = request.hires.hr_resize_x != 0 || request.hires.hr_resize_y != 0;
        for field in GenerationRequest::fields() {
            let name = field.name.as_str();
            if !is_hires_field(name) {
                continue;
            }
            // A1111 writes `Hires resize` instead of `Hires upscale` when a size is given.
            let wanted = match name {
                "hr_scale" if resize => json!(2.0),
                _ => sent[name].clone(),
            };
            assert_eq!(read[name], wanted, "{name} through the infotext:\n{text}");
        }
    }
}

#[test]
fn bad_fields_are_refused_naming_the_field() {
    let defaults = GenerationRequest::ui_defaults();
    let refuse = |changes: Value| {
        let Value::Object(map) = changes else {
            unreachable!()
        };
        defaults.overlay(&map).unwrap_err()
    };
    assert!(matches!(
        refuse(json!({"denoising_strenght": 0.5})),
        InvalidRequest::UnknownField { field } if field == "denoising_strenght"
    ));
    let error = refuse(json!({"steps": "many"}));
    assert!(error.to_string().starts_with("field \"steps\""), "{error}");
    let error = refuse(json!({"inpainting_fill": 7}));
    assert!(error.to_string().contains("inpainting_fill"), "{error}");
    let error = refuse(json!({"override_settings": {"sd_model_checkpoint": "x"}}));
    assert!(
        matches!(error, InvalidRequest::UnsupportedSetting { .. }),
        "{error}"
    );
    // A1111's shorthands: mask_blur sets both; override_settings set fields.
    let Value::Object(map) = json!({"mask_blur": 9, "override_settings": {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337}})
    else {
        unreachable!()
    };
    let request = defaults.overlay(&map).unwrap();
    assert_eq!(
        (request.inpaint.mask_blur_x, request.inpaint.mask_blur_y),
        (9, 9)
    );
    assert_eq!(request.clip_skip, 2);
    assert_eq!(request.eta_noise_seed_delta, 31337);
    // Range checks name the field too.
    let mut bad = defaults.clone();
    bad.inpaint.mask_weight = 2.0;
    assert!(bad
        .validate(8)
        .unwrap_err()
        .to_string()
        .contains("inpainting_mask_weight"));
}

#[test]
fn api_and_ui_presets_differ_where_a1111_says() {
    let (ui, api) = (
        GenerationRequest::ui_defaults(),
        GenerationRequest::api_defaults(),
    );
    assert_eq!(
        (ui.sampler.sampler.as_str(), ui.sampler.steps),
        ("DPM++ 2M", 20)
    );
    assert_eq!(
        (api.sampler.sampler.as_str(), api.sampler.steps),
        ("Euler", 50)
    );
    assert_eq!(api.inpaint.masked_content.index(), 0);
    assert!(api.inpaint.only_masked && !ui.inpaint.only_masked);
    assert_eq!(
        (
            ui.inpaint.only_masked_padding,
            api.inpaint.only_masked_padding
        ),
        (32, 0)
    );
}

/// The request-field table of docs/protocol.md as the fields' docs and defaults make it.
fn field_table() -> String {
    let mut table = String::from("| field | default | meaning |\n|---|---|---|\n");
    for field in GenerationRequest::fields() {
        let default = match &field.default {
            Value::String(s) if s.is_empty() => "`\"\"`".to_string(),
            other => format!("`{other}`"),
        };
        let meaning = field.description.replace('|', "\\|");
        table.push_str(&format!("| `{}` | {default} | {meaning} |\n", field.name));
    }
    table
}

/// docs/protocol.md's table of `params` is generated from the request type (its doc comments
/// and defaults): a new field's doc comment is its documentation. `SDHOST_BLESS=1` rewrites it.
#[test]
fn the_protocol_doc_lists_every_request_field() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (begin, end) = (
        "<!-- request-fields: begin -->\n",
        "<!-- request-fields: end -->",
    );
    let start = doc.find(begin).expect("docs/protocol.md marks its table") + begin.len();
    let stop = doc[start..].find(end).expect("the table's end marker") + start;
    let table = field_table();
    if std::env::var_os("SDHOST_BLESS").is_some() {
        std::fs::write(&path, format!("{}{table}{}", &doc[..start], &doc[stop..])).unwrap();
        return;
    }
    assert_eq!(
        &doc[start..stop],
        table,
        "docs/protocol.md's request-field table is out of date: run SDHOST_BLESS=1 cargo test --release --test integration request::"
    );
}
