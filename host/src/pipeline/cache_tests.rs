//! The caches between jobs on the tiny model: a repeated prompt reuses its conditioning (no
//! text-encoder call) and everything the conditioning depends on invalidates it; a repeated
//! LoRA set patches no layer.

use std::path::Path;

use tch::{Kind, Tensor};

use super::extra_networks::activate_extra_networks;
use super::img2img::tests::{registry, tiny_model};
use super::img2img::{run_img2img_unobserved, Img2ImgJob};
use super::job::JobConditioning;
use super::model::GenerationModel;
use crate::extra_networks::dirs::NetworkDirs;
use crate::prompt::embeddings::{Embedding, EmbeddingDatabase};
use crate::request::GenerationRequest;
use crate::sampling::plan::SamplerSettings;
use crate::tiny_model::{random_lora, RandomLora};

/// A rank-4 LoRA on every text-encoder linear and UNet attention projection of `model`
/// (kohya names), random from `seed`.
fn write_lora(model: &GenerationModel, path: &Path, seed: i64) {
    let lora = RandomLora {
        rank: 4,
        scale: 0.5,
        kind: Kind::Float,
        alpha: None,
        unet_layers: &["transformer_blocks"],
        seed,
    };
    let tensors = random_lora(&model.sd, &lora);
    assert!(!tensors.is_empty());
    crate::tiny_model::save_safetensors(&tensors, path).unwrap();
}

fn params(prompt: &str) -> GenerationRequest {
    GenerationRequest {
        prompt: prompt.into(),
        negative_prompt: "blurry".into(),
        width: 64,
        height: 64,
        seed: 3,
        sampler: SamplerSettings {
            sampler: "Euler".into(),
            steps: 3,
            denoising_strength: 0.7,
            ..SamplerSettings::default()
        },
        ..GenerationRequest::default()
    }
}

/// The job's conditioning as `condition` gives it, after activating its networks.
fn condition(model: &GenerationModel, params: &GenerationRequest) -> JobConditioning {
    let registry = registry();
    let job = Img2ImgJob::prepare(model, &registry, params).unwrap();
    let networks = job.activate_networks();
    job.condition(&networks).unwrap()
}

fn context(conditioning: &JobConditioning) -> Tensor {
    conditioning.cond[0].schedule[0]
        .cond
        .crossattn
        .shallow_clone()
}

fn stats(model: &GenerationModel) -> (u64, u64) {
    model.conditionings.lock().unwrap().stats()
}

#[test]
fn a_repeated_prompt_reuses_its_conditioning_and_the_same_images_come_out() {
    let _guard = tch::no_grad_guard();
    let dir = tempfile::tempdir().unwrap();
    let (model, registry) = (tiny_model(dir.path()), registry());
    let init = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 3, y as u8 * 4, 90]));
    let run = |params: &GenerationRequest| {
        run_img2img_unobserved(&model, &registry, params, &init, None).unwrap()
    };
    let params = params("a [red:blue:2] cat");
    let first = run(&params);
    assert_eq!(stats(&model), (0, 1));
    let second = run(&params);
    // The second job's prompts came from the cache: no text-encoder call.
    assert_eq!(stats(&model), (1, 1));
    assert_eq!(first.images[0].image, second.images[0].image);
    assert_eq!(
        first.images[0].infotext.to_text(),
        second.images[0].infotext.to_text()
    );
    // Another seed is the same prompt: still a hit.
    run(&GenerationRequest { seed: 4, ..params });
    assert_eq!(stats(&model), (2, 1));
}

#[test]
fn what_the_conditioning_depends_on_invalidates_it() {
    let _guard = tch::no_grad_guard();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let base = params("a cat");
    let plain = condition(&model, &base);
    let misses = |model: &GenerationModel| stats(model).1;
    let changes = [
        GenerationRequest {
            prompt: "a dog".into(),
            ..base.clone()
        },
        GenerationRequest {
            negative_prompt: "sharp".into(),
            ..base.clone()
        },
        GenerationRequest {
            clip_skip: 2,
            ..base.clone()
        },
        // Prompt-editing schedules count steps.
        GenerationRequest {
            sampler: SamplerSettings {
                steps: 5,
                ..base.sampler.clone()
            },
            ..base.clone()
        },
        // Twice the model calls per step.
        GenerationRequest {
            sampler: SamplerSettings {
                sampler: "Heun".into(),
                ..base.sampler.clone()
            },
            ..base.clone()
        },
    ];
    for (n, params) in changes.iter().enumerate() {
        condition(&model, params);
        assert_eq!(misses(&model), 2 + n as u64, "change {n} missed");
    }
    // SD 1.x conditioning does not depend on the size: a hit.
    let hits = stats(&model).0;
    condition(
        &model,
        &GenerationRequest {
            width: 128,
            ..base.clone()
        },
    );
    assert_eq!(stats(&model).0, hits + 1);
    // The clip-skip entry is still there and differs from the plain one.
    let skipped = condition(&model, &changes[2]);
    assert!(!context(&skipped).allclose(&context(&plain), 1e-6, 1e-6, false));
    // Eight entries at most.
    for n in 0..12 {
        condition(&model, &params(&format!("prompt {n}")));
    }
    assert_eq!(model.conditionings.lock().unwrap().len(), 8);
}

#[test]
fn a_lora_set_and_its_weights_are_part_of_the_key_and_a_repeated_set_patches_nothing() {
    let _guard = tch::no_grad_guard();
    let dir = tempfile::tempdir().unwrap();
    let lora_dir = dir.path().join("Lora");
    std::fs::create_dir_all(&lora_dir).unwrap();
    let model = tiny_model(dir.path()).with_network_dirs(NetworkDirs {
        lora: vec![lora_dir.clone()],
        ..NetworkDirs::default()
    });
    write_lora(&model, &lora_dir.join("style.safetensors"), 1);

    let plain = context(&condition(&model, &params("a cat")));
    let job = activate_extra_networks(&model, "a cat <lora:style:1>");
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
    assert!(job.lora_changed_layers > 0);
    // The same set again: every layer already carries it, nothing is patched.
    let again = activate_extra_networks(&model, "a dog <lora:style:1>");
    assert_eq!(again.lora_changed_layers, 0);
    assert_eq!(again.lora_set, job.lora_set);

    let patched = context(&condition(&model, &params("a cat <lora:style:1>")));
    assert_eq!(stats(&model), (0, 2), "the LoRA set is another key");
    assert!(
        !patched.allclose(&plain, 1e-6, 1e-6, false),
        "the LoRA changes the text encoder"
    );
    let repeated = context(&condition(&model, &params("a cat <lora:style:1>")));
    assert_eq!(stats(&model), (1, 2));
    assert!(repeated.equal(&patched));
    // Another text-encoder weight is another set.
    let half = context(&condition(&model, &params("a cat <lora:style:0.5>")));
    assert_eq!(stats(&model), (1, 3));
    assert!(!half.allclose(&patched, 1e-6, 1e-6, false));
    // Back to the model's own weights: the first entry again, equal to a fresh encode.
    let back = condition(&model, &params("a cat"));
    assert_eq!(stats(&model), (2, 3));
    assert!(context(&back).equal(&plain));
    // A fresh model's encode is another computation: other tests running beside this one may
    // change libtorch's thread count, and with it the order of float sums.
    let fresh = tiny_model(dir.path());
    assert!(context(&condition(&fresh, &params("a cat"))).allclose(&plain, 1e-5, 1e-6, false));

    // A file changed on disk is loaded again with a new id: a new set, a miss.
    write_lora(&model, &lora_dir.join("style.safetensors"), 2);
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(lora_dir.join("style.safetensors"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let rewritten = context(&condition(&model, &params("a cat <lora:style:1>")));
    assert_eq!(stats(&model), (2, 4));
    assert!(!rewritten.allclose(&patched, 1e-6, 1e-6, false));
}

#[test]
fn the_embeddings_fingerprint_follows_the_loaded_embeddings() {
    let embedding = |name: &str, hash: &str| Embedding {
        name: name.into(),
        vectors: vec![0.5; 8],
        width: 8,
        hash: hash.into(),
        path: format!("/e/{name}.pt").into(),
    };
    let mut a = EmbeddingDatabase::default();
    let empty = a.fingerprint();
    a.add(embedding("star", "111111111111"));
    let one = a.fingerprint();
    assert_ne!(empty, one);
    let mut b = EmbeddingDatabase::default();
    b.add(embedding("star", "222222222222"));
    assert_ne!(b.fingerprint(), one, "another file under the same name");
    let mut c = EmbeddingDatabase::default();
    c.add(embedding("star", "111111111111"));
    assert_eq!(c.fingerprint(), one);
}
