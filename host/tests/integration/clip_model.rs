//! OpenAI CLIP ViT as A1111's interrogator loads it, against openai-clip on a tiny model in the
//! real file formats (tests/reference/clip_model_reference.py): the TorchScript archive and a
//! plain state dict load, the preprocessed pictures are Pillow's to the byte, tokens are
//! `clip.tokenize`'s, features are within 1e-4 of A1111's fp32 CPU model, and hostile or broken
//! files are refused.

use crate::common;
use sdhost::checkpoint::ModelHashes;
use sdhost::interrogate::clip_model::{ClipModelError, OpenAiClipFeatures};
use sdhost::interrogate::clip_tokenize::tokenize;
use sdhost::interrogate::ClipFeatures;
use sdhost::pickle::{load_state_dict, PickleError};
use sdhost::weights::LoadError;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Features before normalisation, fp32 CPU (spec §7.5).
const FEATURE_TOLERANCE: f64 = 1e-4;

#[derive(serde::Deserialize)]
struct Lines {
    lines: Vec<String>,
    text_lines: usize,
}

const IMAGES: &[&str] = &[
    "square", "w57", "w59", "tall90", "shrink89", "wide", "grow", "to57", "to59",
];

#[test]
fn torchscript_archive_matches_openai_clip() {
    let dir = tempfile::tempdir().unwrap();
    common::run_reference(
        "clip_model_reference.py",
        &["reference".as_ref(), dir.path().as_os_str()],
    );
    let reference = common::read_tensors(&dir.path().join("reference.safetensors"));
    let archive = dir.path().join("ViT-L-14.pt");
    let clip = OpenAiClipFeatures::load(&archive, Device::Cpu).unwrap();
    assert_eq!(clip.input_resolution(), 56);
    assert_eq!(clip.context_length(), 77);
    assert_eq!(clip.model().config().vision_heads(), 1);
    assert_eq!(
        clip.identity(),
        ModelHashes::compute(&archive).unwrap().sha256
    );

    for name in IMAGES {
        let image = image::open(dir.path().join(format!("image_{name}.png")))
            .unwrap()
            .to_rgb8();
        let crop = clip.preprocess(&image);
        let expected = &reference[&format!("preprocessed.{name}")];
        let actual = Tensor::from_slice(crop.as_raw()).reshape(expected.size());
        assert!(actual.equal(expected), "{name}: preprocessed pixels differ");
        let features = clip.image_features(&image);
        assert_eq!(features.kind(), Kind::Float);
        common::assert_close(
            &format!("image {name}"),
            &features,
            &reference[&format!("image.{name}")],
            FEATURE_TOLERANCE,
        );
    }

    let lines: Lines =
        serde_json::from_slice(&std::fs::read(dir.path().join("lines.json")).unwrap()).unwrap();
    let tokens = tokenize(&lines.lines, 77);
    let expected = &reference["tokens"];
    for (i, line) in lines.lines.iter().enumerate() {
        let row = tokens.get(i as i64);
        assert!(
            row.equal(&expected.get(i as i64)),
            "tokens of {line:?}: {row:?} vs {:?}",
            expected.get(i as i64)
        );
    }
    // More lines than one chunk (256), of mixed lengths: truncated rows, chunks and their order.
    let text_lines = &lines.lines[..lines.text_lines];
    assert!(text_lines.len() > 256);
    let text = clip.text_features(text_lines);
    common::assert_close("text", &text, &reference["text"], FEATURE_TOLERANCE);
    assert_eq!(clip.text_features(&[]).size(), [0, 32]);

    // The same weights as a plain `torch.save(state_dict)` file give the same features.
    let plain = OpenAiClipFeatures::load(&dir.path().join("state_dict.pt"), Device::Cpu).unwrap();
    let image = image::open(dir.path().join("image_wide.png"))
        .unwrap()
        .to_rgb8();
    assert!(plain
        .image_features(&image)
        .equal(&clip.image_features(&image)));
    assert!(plain
        .text_features(&text_lines[..20])
        .equal(&clip.text_features(&text_lines[..20])));
    assert_ne!(plain.identity(), clip.identity());
}

#[test]
fn hostile_truncated_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    common::run_reference(
        "clip_model_reference.py",
        &["hostile".as_ref(), dir.path().as_os_str()],
    );
    // The TorchScript archive reads as its module tree's state dict.
    let model = dir.path().join("model.pt");
    let state = load_state_dict(&model).unwrap();
    assert_eq!(
        state.shape("visual.conv1.weight"),
        Some(&[64, 3, 14, 14][..])
    );
    assert_eq!(state.kind("visual.conv1.weight"), Some(Kind::Half));
    assert_eq!(state.kind("visual.positional_embedding"), Some(Kind::Float));
    assert_eq!(
        state.shape("transformer.resblocks.1.attn.in_proj_weight"),
        Some(&[192, 64][..])
    );
    assert_eq!(state.kind("input_resolution"), Some(Kind::Int64));

    // The same pickle without the archive's code/ records is a checkpoint naming `__torch__`
    // classes: refused as any unknown global.
    let err = load_state_dict(&dir.path().join("no_code.pt"))
        .err()
        .unwrap();
    assert!(
        matches!(&err, PickleError::RefusedGlobal { module, .. } if module.starts_with("__torch__.")),
        "{err}"
    );
    // A TorchScript archive may not name anything else.
    let os_system = dir.path().join("os_system.pt");
    let err = OpenAiClipFeatures::load(&os_system, Device::Cpu)
        .err()
        .unwrap();
    assert!(
        matches!(&err, ClipModelError::Load(LoadError::Pickle(PickleError::RefusedGlobal { module, name, .. })) if module == "os" && name == "system"),
        "{err}"
    );
    assert!(err.to_string().contains("os_system.pt"), "{err}");

    // Cut anywhere: an error, never a panic.
    let bytes = std::fs::read(&model).unwrap();
    let cut = dir.path().join("cut.pt");
    for len in [
        0,
        3,
        100,
        bytes.len() / 3,
        bytes.len() - 30,
        bytes.len() - 1,
    ] {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let outcome = std::panic::catch_unwind(|| OpenAiClipFeatures::load(&cut, Device::Cpu));
        assert!(outcome.expect("no panic").is_err(), "cut at {len} loaded");
    }

    // Missing and misshapen tensors, and files that are not CLIP, say so.
    let mut tensors: Vec<(String, Tensor)> = state.tensors().unwrap();
    let write = |name: &str, tensors: &[(String, Tensor)]| {
        let path = dir.path().join(name);
        Tensor::write_safetensors(tensors, &path).unwrap();
        path
    };
    tensors.retain(|(k, _)| k != "visual.ln_post.weight");
    let missing = write("missing.safetensors", &tensors);
    let err = OpenAiClipFeatures::load(&missing, Device::Cpu)
        .err()
        .unwrap();
    assert!(
        matches!(&err, ClipModelError::Load(LoadError::MissingTensor { key, .. }) if key == "visual.ln_post.weight"),
        "{err}"
    );
    tensors.push((
        "visual.ln_post.weight".into(),
        Tensor::ones([63], (Kind::Float, Device::Cpu)),
    ));
    let misshapen = write("misshapen.safetensors", &tensors);
    let err = OpenAiClipFeatures::load(&misshapen, Device::Cpu)
        .err()
        .unwrap();
    assert!(
        matches!(&err, ClipModelError::Load(LoadError::ShapeMismatch { key, .. }) if key == "visual.ln_post.weight"),
        "{err}"
    );
    let sd = common::tiny_model(dir.path(), 3);
    let err = OpenAiClipFeatures::load(&sd, Device::Cpu).err().unwrap();
    assert!(matches!(err, ClipModelError::NotClip { .. }), "{err}");
    let err = OpenAiClipFeatures::load(Path::new("/nonexistent/ViT-L-14.pt"), Device::Cpu)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("/nonexistent/ViT-L-14.pt"),
        "{err}"
    );
}
