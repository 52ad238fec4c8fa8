//! Whether a checkpoint's UNet predicts noise or velocity, decided as A1111 decides it, with
//! the file-level hints A1111 does not read named as such.
//!
//! Rules, first match wins: a sidecar `<stem>.yaml` (A1111's
//! `find_checkpoint_config_near_filename`: ldm `parameterization: "v"`, sgm `VScaling`); for
//! SDXL the `v_pred` key of v-prediction fine-tunes (ComfyUI's convention, ignored by A1111,
//! which then samples them as ε); the `modelspec.prediction_type` metadata kohya's tools and
//! sdhost's tiny models write; for 4-channel SD 2.x A1111's test
//! (`sd_models_config.py: is_using_v_parameterization_for_sd2`) run on the file's own UNet;
//! otherwise ε.

use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use tch::{Kind, Tensor};

use super::Checkpoint;
use crate::models::text_encoders::ModelFamily;
use crate::models::unet::UNetModel;
use crate::models::{Architecture, Prediction};

/// The prediction type of a model and the rule that decided it.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictionDetection {
    /// What the UNet predicts.
    pub prediction: Prediction,
    /// Which rule decided, for `sdhost info`.
    pub reason: String,
}

impl PredictionDetection {
    fn new(prediction: Prediction, reason: impl Into<String>) -> Self {
        Self {
            prediction,
            reason: reason.into(),
        }
    }
}

/// The answer of the rules that need no network, if one applies; `None` means A1111's SD2
/// test must run ([`needs_v_test`]) or the model is ε.
pub fn prediction_from_file(ckpt: &Checkpoint, family: ModelFamily) -> Option<PredictionDetection> {
    if let Some(found) = sidecar_yaml(ckpt.path()) {
        return Some(found);
    }
    if family.is_sdxl() && ckpt.shape("v_pred").is_some() {
        return Some(PredictionDetection::new(
            Prediction::V,
            "the `v_pred` key of SDXL v-prediction fine-tunes (A1111 1.10 ignores it)",
        ));
    }
    match ckpt.metadata("modelspec.prediction_type")? {
        "v" | "v_prediction" => Some(PredictionDetection::new(
            Prediction::V,
            "metadata modelspec.prediction_type = v",
        )),
        "epsilon" | "eps" => Some(PredictionDetection::new(
            Prediction::Epsilon,
            "metadata modelspec.prediction_type = epsilon",
        )),
        _ => None,
    }
}

/// Whether A1111 would run its v-prediction test on this architecture: 4-channel SD 2.x.
pub fn needs_v_test(architecture: &Architecture) -> bool {
    architecture.family() == ModelFamily::Sd2 && architecture.unet.in_channels == 4
}

/// The whole decision: file rules, then for 4-channel SD 2.x A1111's test on `unet`, else ε.
pub fn detect_prediction(
    ckpt: &Checkpoint,
    architecture: &Architecture,
    unet: &UNetModel,
) -> PredictionDetection {
    if let Some(found) = prediction_from_file(ckpt, architecture.family()) {
        return found;
    }
    if needs_v_test(architecture) {
        return v_prediction_test(unet);
    }
    let why = match architecture.family() {
        ModelFamily::Sd2 => "SD 2.x inpainting models are ε (A1111 runs no test on them)",
        ModelFamily::Sd1 => "SD 1.x models are ε",
        _ => "SDXL models are ε unless a yaml says otherwise (A1111)",
    };
    PredictionDetection::new(Prediction::Epsilon, why)
}

/// A1111's test, at the UNet's own widths: the mean of `unet(x, 999, context) − x` for
/// `x = 0.5` everywhere (1×4×8×8) and a two-token context of 0.5; below −1 means v.
pub fn v_prediction_test(unet: &UNetModel) -> PredictionDetection {
    let mean = v_test_mean(unet);
    let prediction = if mean < -1.0 {
        Prediction::V
    } else {
        Prediction::Epsilon
    };
    PredictionDetection::new(
        prediction,
        format!("A1111's SD 2.x test: mean(UNet(0.5, t 999) − x) = {mean:.3} (v below −1)"),
    )
}

/// The number A1111's SD 2.x test compares with −1 (see [`v_prediction_test`]), unrounded,
/// so that tests can hold it to a reference.
pub fn v_test_mean(unet: &UNetModel) -> f64 {
    let _guard = tch::no_grad_guard();
    let kind = unet.kind();
    let device = unet.device();
    let config = unet.config();
    let x = Tensor::full([1, config.in_channels, 8, 8], 0.5, (kind, device));
    let t = Tensor::from_slice(&[999f32]).to_device(device);
    let context = Tensor::full([1, 2, config.context_dim], 0.5, (kind, device));
    let out = unet.forward(&x, &t, &context, None);
    (out.to_kind(Kind::Float) - x.to_kind(Kind::Float))
        .mean(Kind::Float)
        .double_value(&[])
}

/// `<stem>.yaml` beside the checkpoint: ldm's `parameterization: "v"` or sgm's
/// `denoiser_scaling.VScaling` say v; a yaml with neither says ε (it replaces A1111's test).
fn sidecar_yaml(checkpoint: &Path) -> Option<PredictionDetection> {
    static LDM_V: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"(?m)^\s*parameterization:\s*["']?v["']?\s*(#.*)?$"#).expect("valid regex")
    });
    let yaml = checkpoint.with_extension("yaml");
    let text = std::fs::read_to_string(&yaml).ok()?;
    let name = yaml.file_name()?.to_string_lossy().into_owned();
    Some(
        if LDM_V.is_match(&text) || text.contains("denoiser_scaling.VScaling") {
            PredictionDetection::new(
                Prediction::V,
                format!("{name} beside the checkpoint says v"),
            )
        } else {
            PredictionDetection::new(
                Prediction::Epsilon,
                format!("{name} beside the checkpoint (no v parameterization)"),
            )
        },
    )
}
