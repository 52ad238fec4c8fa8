//! SD 2.x, SDXL and the SDXL refiner (issue #19): every network of each family's tiny file
//! against transformers/diffusers (tests/reference/sd2_sdxl_references.py), A1111's
//! conditioning glue per encoder (sdxl_conditioning_reference.py), family detection on files
//! from both writers and on the families sdhost refuses, and whole img2img and inpainting jobs
//! against the reference pipelines (img2img_reference.py, inpaint_reference.py).

use crate::common::{self, assert_close, read_tensors, run_reference};
use image::RgbImage;
use sdhost::checkpoint::{
    detect_family, infer_architecture, infer_architecture_with_reason, prediction_from_file,
    v_test_mean, Checkpoint,
};
use sdhost::models::text_encoders::{ModelFamily, TextEncoders};
use sdhost::models::{Prediction, StableDiffusion};
use sdhost::pipeline::img2img::run_img2img_unobserved;
use sdhost::pipeline::model::GenerationModel;
use sdhost::prepare::inpaint::{InpaintSettings, MaskedContent};
use sdhost::prompt::chunks::{tokenize_line_with, PromptChunk, TokenizedPrompt};
use sdhost::prompt::clean::TextCleaning;
use sdhost::prompt::conditioning::{BatchCond, Conditioner};
use sdhost::prompt::embeddings::EmbeddingDatabase;
use sdhost::tiny_model::{save_safetensors, write_tiny_model, TinyFamily, TinyModelSpec};
use sdhost::weights::LoadError;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Networks: as `parity.rs` (fp32 on both sides).
const TOLERANCE: f64 = 1e-4;
/// Conditioning glue: the same networks on both sides, only the glue differs.
const GLUE_TOLERANCE: f64 = 1e-5;
/// Mean absolute difference per channel value of whole jobs (issues #5, #6).
const MEAN_TOLERANCE: f64 = 1.0;
const EOS: u32 = 49407;

fn write_family(dir: &Path, family: TinyFamily, seed: i64) -> (PathBuf, TinyModelSpec) {
    let spec = TinyModelSpec::family(family, seed);
    let path = dir.join(format!("{family:?}-{seed}.safetensors").to_lowercase());
    write_tiny_model(&spec, &path).expect("write tiny model");
    (path, spec)
}

/// A1111's chunk of reference token ids [77]: the words, then EOS padding from the first EOS
/// on (the reference pads OpenCLIP's ids with 0; sdhost makes that 0 itself).
fn chunk_of_ids(ids: &Tensor) -> PromptChunk {
    let row: Vec<i64> = Vec::<i64>::try_from(ids).expect("int64 ids");
    let mut seen_eos = false;
    let tokens: Vec<u32> = row
        .iter()
        .map(|&t| {
            let token = if seen_eos { EOS } else { t as u32 };
            seen_eos |= token == EOS;
            token
        })
        .collect();
    PromptChunk {
        multipliers: vec![1.0; tokens.len()],
        tokens,
        fixes: Vec::new(),
    }
}

/// The reference's batch of ids [B, 77] as one-chunk prompts without emphasis.
fn prompts_of_ids(ids: &Tensor) -> Vec<TokenizedPrompt> {
    (0..ids.size()[0])
        .map(|b| TokenizedPrompt {
            chunks: vec![chunk_of_ids(&ids.get(b))],
            token_count: 0,
        })
        .collect()
}

fn network_parity(family: TinyFamily, seed: i64) {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let dir = tempfile::tempdir().expect("temp dir");
    let (model, spec) = write_family(dir.path(), family, seed);
    let reference = dir.path().join("reference.safetensors");
    let (width, height) = (96i64, 64i64);
    run_reference(
        "sd2_sdxl_references.py",
        &[
            model.as_os_str(),
            reference.as_os_str(),
            "--latent-size".as_ref(),
            "8".as_ref(),
            "--image-size".as_ref(),
            "64".as_ref(),
            "--width".as_ref(),
            width.to_string().as_ref(),
            "--height".as_ref(),
            height.to_string().as_ref(),
        ],
    );
    let r = read_tensors(&reference);
    let ckpt = Checkpoint::open(&model).expect("open");
    let arch = infer_architecture(&ckpt).expect("infer");
    assert_eq!(
        arch,
        spec.architecture(),
        "{family:?}: inferred architecture"
    );
    let sd = StableDiffusion::load(&ckpt, &arch, Kind::Float, Device::Cpu).expect("load");
    let db = EmbeddingDatabase::default();

    let check_states = |name: &str, states: &[Tensor]| {
        for (i, h) in states.iter().enumerate() {
            assert_close(
                &format!("{family:?} {name} hidden {i}"),
                h,
                &r[&format!("{name}.hidden.{i}")],
                TOLERANCE,
            );
        }
        assert!(
            !r.contains_key(&format!("{name}.hidden.{}", states.len())),
            "{name}: the reference has more hidden states"
        );
    };
    // bigG: every state, the context (penultimate, no ln_final) and the pooled vector.
    let check_big_g = |big_g: &sdhost::models::open_clip::OpenClipTextModel| {
        let ids = &r["big_g.input_ids"];
        let states = big_g.hidden_states_from_embeddings(&big_g.embed_tokens(ids), big_g.layers());
        check_states("big_g", &states);
        assert_close(
            &format!("{family:?} big_g context"),
            &states[states.len() - 2],
            &r["big_g.context"],
            TOLERANCE,
        );
        let pooled = big_g
            .pooled(&states[states.len() - 1], ids)
            .expect("pooled");
        assert_close(
            &format!("{family:?} big_g pooled"),
            &pooled,
            &r["big_g.pooled"],
            TOLERANCE,
        );
    };
    let conditioner = Conditioner::new(&sd.text, &db, 1).with_size(width, height);
    let cond: BatchCond = match &sd.text {
        TextEncoders::Sd2(open_clip) => {
            let ids = &r["text.input_ids"];
            let blocks = open_clip.layers() - 1;
            let states =
                open_clip.hidden_states_from_embeddings(&open_clip.embed_tokens(ids), blocks);
            check_states("text", &states);
            assert_close(
                &format!("{family:?} text context"),
                &open_clip.ln_final(states.last().unwrap()),
                &r["text.context"],
                TOLERANCE,
            );
            conditioner.encode_tokenized(&prompts_of_ids(ids))
        }
        TextEncoders::Sdxl { clip_l, big_g } => {
            let states = clip_l.hidden_states(&r["clip_l.input_ids"]);
            check_states("clip_l", &states);
            assert_close(
                &format!("{family:?} clip_l context"),
                &states[states.len() - 2],
                &r["clip_l.context"],
                TOLERANCE,
            );
            check_big_g(big_g);
            conditioner.encode_tokenized(&prompts_of_ids(&r["clip_l.input_ids"]))
        }
        TextEncoders::SdxlRefiner(big_g) => {
            check_big_g(big_g);
            conditioner.encode_tokenized(&prompts_of_ids(&r["big_g.input_ids"]))
        }
        TextEncoders::Sd1(_) => panic!("{family:?} loaded as SD 1.x"),
    };
    // The Conditioner on the same ids gives the UNet's inputs: the context, and SDXL's vector
    // (pooled text, then the size/crop/aesthetic embeddings of a 96×64 job).
    assert_close(
        &format!("{family:?} conditioner context"),
        &cond.crossattn,
        &r["unet.context"],
        TOLERANCE,
    );
    match (&cond.vector, r.get("unet.y")) {
        (Some(vector), Some(expected)) => {
            assert_close(
                &format!("{family:?} conditioner vector"),
                vector,
                expected,
                TOLERANCE,
            );
            assert_close(
                &format!("{family:?} cond.vector"),
                vector,
                &r["cond.vector"],
                TOLERANCE,
            );
        }
        (None, None) => {}
        (ours, theirs) => panic!(
            "{family:?}: vector input here {}, in the reference {}",
            ours.is_some(),
            theirs.is_some()
        ),
    }
    if let Some(crossattn) = r.get("cond.crossattn") {
        assert_close(
            &format!("{family:?} cond.crossattn"),
            &cond.crossattn,
            crossattn,
            TOLERANCE,
        );
    }

    for i in 0..2 {
        let out = sd.unet.forward(
            &r["unet.x"],
            &r[&format!("unet.t{i}")],
            &r["unet.context"],
            r.get("unet.y"),
        );
        assert_close(
            &format!("{family:?} unet at t{i}"),
            &out,
            &r[&format!("unet.out{i}")],
            TOLERANCE,
        );
    }
    match r.get("vtest.mean") {
        Some(expected) => {
            let ours = v_test_mean(&sd.unet);
            let expected = expected.double_value(&[]);
            let err = (ours - expected).abs() / expected.abs().max(1.0);
            println!("{family:?} v test mean {ours:.6} vs {expected:.6}: relative {err:.3e}");
            assert!(err <= TOLERANCE, "v test mean {ours} vs {expected}");
        }
        None => assert!(
            !(arch.family() == ModelFamily::Sd2 && arch.unet.in_channels == 4),
            "the reference ran no v test on a 4-channel SD 2.x model"
        ),
    }

    let posterior = sd.vae.encode(&r["vae.image"]);
    assert_close("vae mean", &posterior.mean, &r["vae.mean"], TOLERANCE);
    assert_close("vae logvar", &posterior.logvar, &r["vae.logvar"], TOLERANCE);
    assert_close(
        "vae decode",
        &sd.vae.decode(&r["vae.z"]),
        &r["vae.decoded"],
        TOLERANCE,
    );
}

#[test]
fn sd2_networks_match_the_reference() {
    network_parity(TinyFamily::Sd2, 31);
}

#[test]
fn sd2_v_networks_match_the_reference() {
    network_parity(TinyFamily::Sd2V, 32);
}

#[test]
fn sd2_inpainting_networks_match_the_reference() {
    network_parity(TinyFamily::Sd2Inpaint, 33);
}

#[test]
fn sdxl_networks_match_the_reference() {
    network_parity(TinyFamily::Sdxl, 34);
}

#[test]
fn sdxl_inpainting_networks_match_the_reference() {
    network_parity(TinyFamily::SdxlInpaint, 35);
}

#[test]
fn sdxl_refiner_networks_match_the_reference() {
    network_parity(TinyFamily::SdxlRefiner, 36);
}

// ---------------------------------------------------------------------------------------
// Conditioning glue

/// One chunk as the reference reads it: each encoder's tokens, weights and embeddings.
fn chunk_json(l: Option<&PromptChunk>, g: &PromptChunk) -> serde_json::Value {
    let fixes = |c: &PromptChunk| -> Vec<serde_json::Value> {
        c.fixes
            .iter()
            .map(|f| serde_json::json!([f.offset, f.embedding.name]))
            .collect()
    };
    let mut seen_eos = false;
    let tokens_g: Vec<u32> = g
        .tokens
        .iter()
        .map(|&t| {
            let id = if seen_eos { 0 } else { t };
            seen_eos |= t == EOS;
            id
        })
        .collect();
    let mut value = serde_json::json!({
        "tokens_g": tokens_g, "multipliers_g": g.multipliers, "fixes_g": fixes(g),
        "multipliers": g.multipliers, "fixes": fixes(g),
    });
    if let Some(l) = l {
        value["tokens_l"] = serde_json::json!(l.tokens);
        value["multipliers_l"] = serde_json::json!(l.multipliers);
        value["fixes_l"] = serde_json::json!(fixes(l));
    }
    value
}

struct Group {
    name: &'static str,
    texts: Vec<String>,
    negative: bool,
    size: (i64, i64),
    /// A prompt schedule: the texts are what `negative_schedule` made of this prompt.
    schedule: Option<&'static str>,
}

fn glue_parity(family: TinyFamily, seed: i64) {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = write_family(dir.path(), family, seed);
    let ckpt = Checkpoint::open(&model).unwrap();
    let arch = infer_architecture(&ckpt).unwrap();
    let sd = StableDiffusion::load(&ckpt, &arch, Kind::Float, Device::Cpu).unwrap();
    let family_kind = arch.family();
    // The refiner reads SDXL embedding files' `clip_g` in A1111; sdhost's database holds one
    // width per model, so the refiner's groups go without an embedding.
    let with_embedding = matches!(&sd.text, TextEncoders::Sdxl { .. } | TextEncoders::Sd2(_));
    // Textual inversion: SDXL files hold `clip_l` and `clip_g`, SD2's a single tensor.
    let emb_dir = dir.path().join("embeddings");
    std::fs::create_dir(&emb_dir).unwrap();
    let emb_path = emb_dir.join("xlemb.safetensors");
    let tensors = sdhost::rng::with_global_seed(seed, || match &sd.text {
        TextEncoders::Sdxl { .. } => vec![
            (
                "clip_l".to_string(),
                Tensor::randn([3, 32], (Kind::Float, Device::Cpu)),
            ),
            (
                "clip_g".to_string(),
                Tensor::randn([3, 128], (Kind::Float, Device::Cpu)),
            ),
        ],
        _ => vec![(
            "emb_params".to_string(),
            Tensor::randn([3, 128], (Kind::Float, Device::Cpu)),
        )],
    });
    save_safetensors(&tensors, &emb_path).unwrap();
    let db = EmbeddingDatabase::load_dir(&emb_dir, arch.text.embedding_width()).unwrap();
    if with_embedding {
        assert_eq!(db.len(), 1, "skipped: {:?}", db.skipped);
    }

    let long = "a red cat, ".repeat(30);
    let mut groups = vec![
        Group {
            name: "emphasis",
            texts: vec!["a (red:1.3) cat on [a mat], ((bird)) (neg:-0.5)".into()],
            negative: false,
            size: (96, 64),
            schedule: None,
        },
        Group {
            name: "break",
            texts: vec!["a cat BREAK (a dog:1.2)".into()],
            negative: false,
            size: (64, 96),
            schedule: None,
        },
        Group {
            name: "batch",
            texts: vec!["a (b:1.5)".into(), long, "c [d]".into()],
            negative: false,
            size: (1024, 768),
            schedule: None,
        },
        Group {
            name: "negative",
            texts: vec!["blurry, (lowres:1.2)".into()],
            negative: true,
            size: (96, 64),
            schedule: None,
        },
        Group {
            name: "empty_negative",
            texts: vec![String::new()],
            negative: true,
            size: (832, 1216),
            schedule: None,
        },
        Group {
            name: "empty_positive",
            texts: vec![String::new()],
            negative: false,
            size: (96, 64),
            schedule: None,
        },
        Group {
            name: "scheduled_negative",
            texts: vec![],
            negative: true,
            size: (96, 64),
            schedule: Some("[:blurry:10]"),
        },
    ];
    if with_embedding {
        groups.push(Group {
            name: "embedding",
            texts: vec!["photo of xlemb, (xlemb:1.2) sitting".into()],
            negative: false,
            size: (96, 64),
            schedule: None,
        });
    }

    let mut groups_json = Vec::new();
    let mut ours: Vec<(String, BatchCond)> = Vec::new();
    for group in &mut groups {
        let conditioner = Conditioner::new(&sd.text, &db, 1).with_size(group.size.0, group.size.1);
        let cond = if let Some(prompt) = group.schedule {
            let schedule = conditioner.negative_schedule(prompt, 20).unwrap();
            assert_eq!(schedule.len(), 2, "{prompt}: two scheduled texts");
            group.texts = vec![String::new(), "blurry".into()];
            BatchCond {
                crossattn: Tensor::stack(
                    &schedule
                        .iter()
                        .map(|s| s.cond.crossattn.shallow_clone())
                        .collect::<Vec<_>>(),
                    0,
                ),
                vector: schedule[0].cond.vector.as_ref().map(|_| {
                    Tensor::stack(
                        &schedule
                            .iter()
                            .map(|s| s.cond.vector.as_ref().unwrap().shallow_clone())
                            .collect::<Vec<_>>(),
                        0,
                    )
                }),
            }
        } else if group.negative {
            conditioner.encode_negative_texts(&group.texts).unwrap()
        } else {
            conditioner.encode_texts(&group.texts).unwrap()
        };
        let texts_json: Vec<serde_json::Value> = group
            .texts
            .iter()
            .map(|text| {
                let l = tokenize_line_with(text, &db, TextCleaning::Clip);
                let g = tokenize_line_with(text, &db, TextCleaning::OpenClip);
                assert_eq!(l.chunks.len(), g.chunks.len());
                let chunks: Vec<serde_json::Value> = g
                    .chunks
                    .iter()
                    .enumerate()
                    .map(|(i, gc)| {
                        let lc = matches!(sd.text, TextEncoders::Sdxl { .. }).then(|| &l.chunks[i]);
                        chunk_json(lc, gc)
                    })
                    .collect();
                serde_json::Value::from(chunks)
            })
            .collect();
        groups_json.push(serde_json::json!({
            "name": group.name, "texts": texts_json, "is_negative": group.negative,
            "width": group.size.0, "height": group.size.1,
            "all_empty": group.texts.iter().all(String::is_empty),
        }));
        ours.push((group.name.to_string(), cond));
    }
    let spec = serde_json::json!({
        "embeddings": {"xlemb": emb_path},
        "groups": groups_json,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let out = dir.path().join("reference.safetensors");
    run_reference(
        "sdxl_conditioning_reference.py",
        &[model.as_os_str(), spec_path.as_os_str(), out.as_os_str()],
    );
    let reference = read_tensors(&out);
    for (name, cond) in &ours {
        assert_close(
            &format!("{family:?} {name} crossattn"),
            &cond.crossattn,
            &reference[&format!("{name}.crossattn")],
            GLUE_TOLERANCE,
        );
        match &cond.vector {
            Some(vector) => assert_close(
                &format!("{family:?} {name} vector"),
                vector,
                &reference[&format!("{name}.vector")],
                GLUE_TOLERANCE,
            ),
            None => assert_eq!(family_kind, ModelFamily::Sd2),
        }
    }
    // What the comparisons rest on: BREAK made two chunks, an empty negative is zeros on
    // SDXL (its size part kept), a scheduled empty text is not.
    assert_eq!(ours[1].1.crossattn.size()[1], 154, "BREAK: two chunks");
    let find = |name: &str| &ours.iter().find(|(n, _)| n == name).unwrap().1;
    if family_kind.is_sdxl() {
        let empty = find("empty_negative");
        assert_eq!(empty.crossattn.abs().max().double_value(&[]), 0.0);
        let pooled = arch.text.pooled_dim().unwrap();
        let vector = empty.vector.as_ref().unwrap();
        assert_eq!(
            vector.narrow(1, 0, pooled).abs().max().double_value(&[]),
            0.0
        );
        assert!(vector.narrow(1, pooled, 256).abs().max().double_value(&[]) > 0.0);
        let scheduled = find("scheduled_negative");
        assert!(scheduled.crossattn.get(0).abs().max().double_value(&[]) > 0.0);
    }
}

#[test]
fn sdxl_conditioning_matches_a1111() {
    glue_parity(TinyFamily::Sdxl, 41);
}

#[test]
fn sdxl_refiner_conditioning_matches_a1111() {
    glue_parity(TinyFamily::SdxlRefiner, 42);
}

#[test]
fn sd2_conditioning_matches_a1111() {
    glue_parity(TinyFamily::Sd2, 43);
}

// ---------------------------------------------------------------------------------------
// Family detection

const ALL: [(TinyFamily, &str, ModelFamily, bool, Prediction); 6] = [
    (
        TinyFamily::Sd2,
        "sd2",
        ModelFamily::Sd2,
        false,
        Prediction::Epsilon,
    ),
    (
        TinyFamily::Sd2V,
        "sd2-v",
        ModelFamily::Sd2,
        false,
        Prediction::V,
    ),
    (
        TinyFamily::Sd2Inpaint,
        "sd2-inpaint",
        ModelFamily::Sd2,
        true,
        Prediction::Epsilon,
    ),
    (
        TinyFamily::Sdxl,
        "sdxl",
        ModelFamily::Sdxl,
        false,
        Prediction::Epsilon,
    ),
    (
        TinyFamily::SdxlInpaint,
        "sdxl-inpaint",
        ModelFamily::Sdxl,
        true,
        Prediction::Epsilon,
    ),
    (
        TinyFamily::SdxlRefiner,
        "sdxl-refiner",
        ModelFamily::SdxlRefiner,
        false,
        Prediction::Epsilon,
    ),
];

#[test]
fn families_are_detected_in_files_of_both_writers() {
    let dir = tempfile::tempdir().unwrap();
    let python_dir = dir.path().join("python");
    run_reference("tiny_sgm_files.py", &[python_dir.as_os_str()]);
    for (tiny, name, family, inpainting, prediction) in ALL {
        let (rust_file, spec) = write_family(dir.path(), tiny, 5);
        let python_file = python_dir.join(format!("{name}.safetensors"));
        for path in [&rust_file, &python_file] {
            let ckpt = Checkpoint::open(path).unwrap();
            let (arch, detection) = infer_architecture_with_reason(&ckpt)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(detection.family, family, "{}", path.display());
            assert_eq!(arch.family(), family);
            assert_eq!(arch.is_inpainting(), inpainting, "{}", path.display());
            assert_eq!(
                arch,
                spec.architecture(),
                "{}: the two writers' layouts differ",
                path.display()
            );
            let found = prediction_from_file(&ckpt, family).expect("metadata says");
            assert_eq!(found.prediction, prediction, "{}", path.display());
        }
    }

    // `sdhost info --json` says the family, why, and the prediction type with its rule.
    for (name, family, prediction) in [
        ("sd2-v", "SD 2.x", "V"),
        ("sdxl-inpaint", "SDXL inpainting", "Epsilon"),
        ("sdxl-refiner", "SDXL refiner", "Epsilon"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sdhost"))
            .args(["info", "--json", "--no-hash"])
            .arg(python_dir.join(format!("{name}.safetensors")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(value["family"], family, "{name}");
        assert!(
            value["family_reason"]
                .as_str()
                .unwrap()
                .contains("ln_final")
                || value["family_reason"]
                    .as_str()
                    .unwrap()
                    .contains("OpenCLIP"),
            "{value}"
        );
        assert_eq!(value["prediction"], prediction, "{name}");
        assert!(value["prediction_reason"]
            .as_str()
            .unwrap()
            .contains("modelspec.prediction_type"));
    }
}

/// A tensor name and shape of a synthetic file.
type Key<'a> = (&'a str, &'a [i64]);

/// A minimal file holding `tensors` (zeros of the given shapes).
fn synthetic(dir: &Path, name: &str, keys: &[Key]) -> PathBuf {
    let tensors: Vec<(String, Tensor)> = keys
        .iter()
        .map(|(k, shape)| {
            (
                k.to_string(),
                Tensor::zeros(*shape, (Kind::Float, Device::Cpu)),
            )
        })
        .collect();
    let path = dir.join(format!("{name}.safetensors"));
    save_safetensors(&tensors, &path).unwrap();
    path
}

const STEM: &str = "model.diffusion_model.input_blocks.0.0.weight";
const SD1_TOKENS: &str =
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight";
const SD2_TOKENS: &str = "cond_stage_model.model.token_embedding.weight";
const BIG_G_LN: &str = "conditioner.embedders.1.model.ln_final.weight";
const MID_ATTN: &str =
    "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight";

#[test]
fn unsupported_families_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<Key>, &str)> = vec![
        (
            "sd3",
            vec![
                (
                    "model.diffusion_model.x_embedder.proj.weight",
                    &[8, 16, 2, 2],
                ),
                (
                    "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
                    &[24, 8],
                ),
            ],
            "Stable Diffusion 3",
        ),
        (
            "flux",
            vec![
                ("double_blocks.0.img_attn.qkv.weight", &[24, 8]),
                ("img_in.weight", &[8, 64]),
            ],
            "Flux",
        ),
        (
            "playground",
            vec![
                ("edm_mean", &[1, 4, 1, 1]),
                ("edm_std", &[1, 4, 1, 1]),
                (STEM, &[8, 4, 3, 3]),
                (BIG_G_LN, &[128]),
                (MID_ATTN, &[8, 8]),
            ],
            "Playground",
        ),
        (
            "sd2_depth",
            vec![
                (
                    "depth_model.model.pretrained.act_postprocess1.0.project.0.weight",
                    &[8, 16],
                ),
                (STEM, &[8, 5, 3, 3]),
                (SD2_TOKENS, &[16, 8]),
            ],
            "SD 2.x depth",
        ),
        (
            "sd2_depth_stem_only",
            vec![(STEM, &[8, 5, 3, 3]), (SD2_TOKENS, &[16, 8])],
            "SD 2.x depth",
        ),
        (
            "unclip",
            vec![
                ("embedder.model.visual.proj", &[8, 8]),
                (STEM, &[8, 4, 3, 3]),
                (SD2_TOKENS, &[16, 8]),
            ],
            "unCLIP",
        ),
        (
            "instruct_pix2pix",
            vec![(STEM, &[8, 8, 3, 3]), (SD1_TOKENS, &[16, 8])],
            "InstructPix2Pix",
        ),
        (
            "ssd_1b",
            vec![(STEM, &[8, 4, 3, 3]), (BIG_G_LN, &[128])],
            "SSD-1B",
        ),
    ];
    for (name, keys, family) in cases {
        let path = synthetic(dir.path(), name, &keys);
        let ckpt = Checkpoint::open(&path).unwrap();
        let err = detect_family(&ckpt).unwrap_err();
        match &err {
            LoadError::UnsupportedFamily { family: f, .. } => {
                assert!(f.contains(family), "{name}: refused as {f}, not {family}")
            }
            other => panic!("{name}: {other}"),
        }
        let text = infer_architecture(&ckpt).unwrap_err().to_string();
        println!("{name}: {text}");
        assert!(
            text.contains(family) && text.contains("does not run"),
            "{text}"
        );
    }

    // SD 2.1 Turbo keeps its ViT-H tower where the refiner keeps bigG; A1111 tells them
    // apart by the 1024-wide `ln_final`.
    let turbo = synthetic(
        dir.path(),
        "sd21_turbo",
        &[
            (STEM, &[8, 4, 3, 3]),
            ("conditioner.embedders.0.model.ln_final.weight", &[1024]),
        ],
    );
    let found = detect_family(&Checkpoint::open(&turbo).unwrap()).unwrap();
    assert_eq!(found.family, ModelFamily::Sd2, "{}", found.reason);
    assert_eq!(found.text_prefix, "conditioner.embedders.0.model");
    let refiner = synthetic(
        dir.path(),
        "refiner_like",
        &[
            (STEM, &[8, 4, 3, 3]),
            ("conditioner.embedders.0.model.ln_final.weight", &[1280]),
        ],
    );
    let found = detect_family(&Checkpoint::open(&refiner).unwrap()).unwrap();
    assert_eq!(found.family, ModelFamily::SdxlRefiner);
    let sdxl = synthetic(
        dir.path(),
        "sdxl_like",
        &[
            (STEM, &[8, 4, 3, 3]),
            (BIG_G_LN, &[128]),
            (MID_ATTN, &[8, 8]),
        ],
    );
    assert_eq!(
        detect_family(&Checkpoint::open(&sdxl).unwrap())
            .unwrap()
            .family,
        ModelFamily::Sdxl
    );
}

/// Rewrites `from` into `to` after `edit` changed its tensors.
fn rewrite(from: &Path, to: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let mut tensors = Tensor::read_safetensors(from).unwrap();
    edit(&mut tensors);
    save_safetensors(&tensors, to).unwrap();
}

#[test]
fn broken_sdxl_files_are_refused_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (sdxl, _) = write_family(dir.path(), TinyFamily::Sdxl, 9);
    let (sd1, _) = write_family(dir.path(), TinyFamily::Sd1, 9);

    // Truncated: the header promises more bytes than the file has.
    let truncated = dir.path().join("truncated.safetensors");
    let bytes = std::fs::read(&sdxl).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = Checkpoint::open(&truncated)
        .and_then(|c| {
            let arch = infer_architecture(&c)?;
            StableDiffusion::load(&c, &arch, Kind::Float, Device::Cpu).map(|_| ())
        })
        .unwrap_err();
    println!("truncated: {err}");
    assert!(
        matches!(err, LoadError::InvalidSafetensors { .. }),
        "truncated: {err:?}"
    );

    // SDXL's UNet with SD 1.x's text encoder.
    let mixed = dir.path().join("mixed.safetensors");
    let sd1_text: Vec<(String, Tensor)> = Tensor::read_safetensors(&sd1)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.starts_with("cond_stage_model."))
        .collect();
    rewrite(&sdxl, &mixed, |t| {
        t.retain(|(k, _)| !k.starts_with("conditioner."));
        t.extend(sd1_text);
    });
    let err = infer_architecture(&Checkpoint::open(&mixed).unwrap()).unwrap_err();
    println!("mixed: {err}");
    assert!(
        matches!(err, LoadError::NotStableDiffusion { .. }),
        "mixed: {err:?}"
    );

    // bigG without its text projection: no pooled vector for SDXL's `label_emb`.
    let no_projection = dir.path().join("no_projection.safetensors");
    rewrite(&sdxl, &no_projection, |t| {
        t.retain(|(k, _)| k != "conditioner.embedders.1.model.text_projection")
    });
    let err = infer_architecture(&Checkpoint::open(&no_projection).unwrap()).unwrap_err();
    println!("no projection: {err}");
    assert!(
        matches!(
            err,
            LoadError::NotStableDiffusion { .. } | LoadError::MissingTensor { .. }
        ) && err.to_string().contains("text_projection"),
        "no projection: {err:?}"
    );

    // `label_emb` of the wrong width for pooled text + six size embeddings.
    let wrong_adm = dir.path().join("wrong_adm.safetensors");
    rewrite(&sdxl, &wrong_adm, |t| {
        for (k, v) in t.iter_mut() {
            if k == "model.diffusion_model.label_emb.0.0.weight" {
                *v = Tensor::zeros([v.size()[0], 1600], (Kind::Float, Device::Cpu));
            }
        }
    });
    let err = infer_architecture(&Checkpoint::open(&wrong_adm).unwrap()).unwrap_err();
    println!("wrong adm: {err}");
    assert!(
        matches!(err, LoadError::NotStableDiffusion { .. }) && err.to_string().contains("1600"),
        "wrong adm: {err:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Whole jobs

#[test]
fn sd2_v_img2img_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (checkpoint, _) = write_family(dir.path(), TinyFamily::Sd2V, 61);
    let samplers = [
        ("euler_a", "Euler a", "sample_euler_ancestral", false),
        ("dpmpp_2m_karras", "DPM++ 2M", "sample_dpmpp_2m", true),
    ];
    crate::img2img::compare_with_reference(&checkpoint, (64, 48), &samplers, &[0.75]);
}

#[test]
fn sdxl_img2img_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (checkpoint, _) = write_family(dir.path(), TinyFamily::Sdxl, 62);
    let samplers = [
        ("euler_a", "Euler a", "sample_euler_ancestral", false),
        ("dpmpp_2m_karras", "DPM++ 2M", "sample_dpmpp_2m", true),
    ];
    crate::img2img::compare_with_reference(&checkpoint, (64, 48), &samplers, &[0.75]);
}

struct JobCase {
    name: &'static str,
    family: TinyFamily,
    sampler: &'static str,
    reference_sampler: &'static str,
    karras: bool,
    strength: f64,
    seeds: &'static [u64],
    settings: InpaintSettings,
}

#[test]
fn sd2_v_and_sdxl_inpainting_match_the_reference() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let whole = InpaintSettings::default();
    let cases = [
        JobCase {
            name: "sdxl_inpainting_model_euler_a",
            family: TinyFamily::SdxlInpaint,
            sampler: "Euler a",
            reference_sampler: "sample_euler_ancestral",
            karras: false,
            strength: 1.0,
            seeds: &[5, 6],
            settings: whole.clone(),
        },
        JobCase {
            name: "sdxl_inpainting_model_only_masked_dpmpp_2m",
            family: TinyFamily::SdxlInpaint,
            sampler: "DPM++ 2M",
            reference_sampler: "sample_dpmpp_2m",
            karras: true,
            strength: 0.8,
            seeds: &[7],
            settings: InpaintSettings {
                only_masked: true,
                only_masked_padding: 8,
                masked_content: MaskedContent::Fill,
                mask_weight: 0.7,
                ..whole.clone()
            },
        },
        JobCase {
            name: "sd2_v_ddim",
            family: TinyFamily::Sd2V,
            sampler: "DDIM",
            reference_sampler: "ddim",
            karras: false,
            strength: 0.8,
            seeds: &[8, 9],
            settings: whole.clone(),
        },
        JobCase {
            name: "sd2_v_euler_a_latent_noise",
            family: TinyFamily::Sd2V,
            sampler: "Euler a",
            reference_sampler: "sample_euler_ancestral",
            karras: false,
            strength: 0.9,
            seeds: &[10],
            settings: InpaintSettings {
                masked_content: MaskedContent::LatentNoise,
                ..whole
            },
        },
    ];
    let sdxl_inpaint = write_family(dir.path(), TinyFamily::SdxlInpaint, 70).0;
    let sd2_v = write_family(dir.path(), TinyFamily::Sd2V, 71).0;
    let checkpoint = |family: TinyFamily| match family {
        TinyFamily::SdxlInpaint => &sdxl_inpaint,
        _ => &sd2_v,
    };
    let init_path = dir.path().join("init.png");
    let mask_path = dir.path().join("mask.png");
    let init: RgbImage = common::test_picture(&init_path);
    let mask = crate::inpaint::test_mask(&mask_path);
    let (width, height) = (64u32, 48u32);
    let json: Vec<serde_json::Value> = cases
        .iter()
        .map(|case| {
            let s = &case.settings;
            serde_json::json!({
                "name": case.name, "checkpoint": checkpoint(case.family),
                "sampler": case.reference_sampler, "karras": case.karras, "steps": 10,
                "strength": case.strength, "seeds": case.seeds, "width": width, "height": height,
                "prompt": "a red cat on a sofa", "negative_prompt": "blurry", "cfg_scale": 6.5,
                "blur": s.mask_blur_x, "invert": s.invert,
                "fill": match s.masked_content {
                    MaskedContent::Fill => 0,
                    MaskedContent::Original => 1,
                    MaskedContent::LatentNoise => 2,
                    MaskedContent::LatentNothing => 3,
                },
                "only_masked": s.only_masked, "padding": s.only_masked_padding,
                "mask_weight": s.mask_weight,
            })
        })
        .collect();
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_string(&json).unwrap()).unwrap();
    run_reference(
        "inpaint_reference.py",
        &[
            init_path.as_os_str(),
            mask_path.as_os_str(),
            cases_path.as_os_str(),
            dir.path().as_os_str(),
        ],
    );
    let registry = common::builtin_registry();
    for case in &cases {
        let model =
            GenerationModel::load(checkpoint(case.family), Device::Cpu, Kind::Float, None).unwrap();
        if case.family == TinyFamily::Sd2V {
            assert_eq!(model.prediction.prediction, Prediction::V);
        }
        let params = crate::inpaint::reference_job(
            (width, height),
            case.seeds,
            (case.sampler, case.karras, case.strength),
            &case.settings,
        );
        let outcome = run_img2img_unobserved(&model, &registry, &params, &init, Some(&mask))
            .expect("inpainting job runs");
        assert_eq!(outcome.images.len(), case.seeds.len());
        for (i, generated) in outcome.images.iter().enumerate() {
            let expected = image::open(dir.path().join(format!("{}_{i}.png", case.name)))
                .unwrap()
                .to_rgb8();
            let (mean, max) = common::pixel_difference(&generated.image, &expected);
            println!(
                "{}: image {i}: mean |Δ| {mean:.4}, max {max} (of 255)",
                case.name
            );
            assert!(
                mean <= MEAN_TOLERANCE,
                "{}: mean |Δ| {mean:.4} > {MEAN_TOLERANCE}",
                case.name
            );
        }
    }
}
