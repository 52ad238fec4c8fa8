//! The LyCORIS module types (LoHa, LoKr, full diff, (IA)³, GLoRA, norm, OFT/BOFT) against a
//! transcription of A1111 v1.10.1's `network_*.py` math (tests/reference/lycoris_reference.py,
//! which also checks its LoHa and LoKr deltas against the lycoris-lora package): each case's
//! tensors are built into a module through the types' `create` checks in A1111's order, and
//! the weight and bias changes must match within 1e-6 (relative) in float32. Cases where A1111
//! fails to apply a layer must fail here too, as errors. The `lyco_helpers.py` rebuilds LoRA
//! shares (`rebuild_conventional` with `dyn`, `rebuild_cp_decomposition`) are compared alone.

use std::collections::BTreeMap;

use sdhost::extra_networks::lora::modules::{
    full, glora, hada, helpers, ia3, lokr, norm, oft, LayerKind, ModuleWeights, Multipliers,
    NetworkError, NetworkModule, Result,
};
use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::common;

/// One case of the reference's `cases.json`.
#[derive(Deserialize)]
struct Case {
    name: String,
    #[serde(rename = "type")]
    module_type: String,
    layer: String,
    sd_key: String,
    weight_shape: Vec<i64>,
    te: f64,
    unet: f64,
    suffixes: Vec<String>,
    error: Option<String>,
}

/// A module type's constructor.
type Create = fn(&ModuleWeights) -> Option<Result<Box<dyn NetworkModule>>>;

/// The types in the order of A1111's `networks.module_types` (LoRA, first there, is not one
/// of these).
const TYPES: [(&str, Create); 7] = [
    ("hada", hada::create),
    ("ia3", ia3::create),
    ("lokr", lokr::create),
    ("full", full::create),
    ("norm", norm::create),
    ("glora", glora::create),
    ("oft", oft::create),
];

/// The first type that accepts `weights`, and what it built.
fn dispatch(weights: &ModuleWeights) -> Option<(&'static str, Result<Box<dyn NetworkModule>>)> {
    TYPES
        .iter()
        .find_map(|(name, create)| create(weights).map(|module| (*name, module)))
}

/// The layer kind the reference named.
fn layer_kind(name: &str) -> LayerKind {
    match name {
        "linear" => LayerKind::Linear,
        "conv2d" => LayerKind::Conv2d {
            stride: 1,
            padding: 1,
        },
        "layernorm" => LayerKind::LayerNorm,
        "groupnorm" => LayerKind::GroupNorm,
        other => panic!("unknown layer kind {other}"),
    }
}

/// Module weights from tensors by suffix.
fn module_weights(
    sd_key: &str,
    layer: LayerKind,
    weight_shape: &[i64],
    w: BTreeMap<String, Tensor>,
) -> ModuleWeights {
    ModuleWeights {
        network_key: format!("lycoris_{sd_key}"),
        sd_key: sd_key.to_string(),
        w,
        layer,
        weight_shape: weight_shape.to_vec(),
    }
}

/// The tolerance for a result of `kind`: float16 results may round differently.
fn tolerance(kind: Kind) -> f64 {
    if kind == Kind::Half {
        1e-3
    } else {
        1e-6
    }
}

#[test]
fn module_types_match_a1111() {
    let dir = tempfile::tempdir().unwrap();
    common::run_reference("lycoris_reference.py", &[dir.path().as_os_str()]);
    let cases: Vec<Case> =
        serde_json::from_slice(&std::fs::read(dir.path().join("cases.json")).unwrap()).unwrap();
    let tensors = common::read_tensors(&dir.path().join("cases.safetensors"));
    let take = |key: String| -> Option<Tensor> { tensors.get(&key).map(Tensor::shallow_clone) };
    assert!(
        cases.len() >= 60,
        "the reference wrote {} cases",
        cases.len()
    );

    for case in &cases {
        let name = &case.name;
        let w: BTreeMap<String, Tensor> = case
            .suffixes
            .iter()
            .map(|s| (s.clone(), take(format!("{name}/{s}")).expect("case tensor")))
            .collect();
        let weights = module_weights(&case.sd_key, layer_kind(&case.layer), &case.weight_shape, w);
        let orig_weight = take(format!("{name}/:orig_weight")).expect("orig weight");
        let multipliers = Multipliers {
            te: case.te,
            unet: case.unet,
            dyn_dim: None,
        };
        let (module_type, module) = dispatch(&weights).expect("a type accepts the case");
        assert_eq!(module_type, case.module_type, "{name}: module type");
        let module = module.unwrap_or_else(|e| panic!("{name}: building failed: {e}"));
        assert_eq!(module.sd_key(), case.sd_key, "{name}: layer key");
        let result = module.calc_updown(&orig_weight, &multipliers);

        if let Some(reason) = &case.error {
            match result {
                Err(e) => println!("{name}: an error as in A1111 ({reason}): {e}"),
                Ok(_) => panic!("{name}: A1111 fails here ({reason}), we did not"),
            }
            continue;
        }
        let got = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = take(format!("{name}/:updown")).expect("expected updown");
        assert_eq!(got.updown.kind(), expected.kind(), "{name}: updown dtype");
        common::assert_close(
            &format!("{name} updown"),
            &got.updown,
            &expected,
            tolerance(expected.kind()),
        );
        match (got.ex_bias, take(format!("{name}/:ex_bias"))) {
            (Some(got), Some(expected)) => {
                assert_eq!(got.kind(), expected.kind(), "{name}: ex_bias dtype");
                common::assert_close(
                    &format!("{name} ex_bias"),
                    &got,
                    &expected,
                    tolerance(expected.kind()),
                )
            }
            (None, None) => {}
            (got, expected) => panic!(
                "{name}: ex_bias {} here, {} in A1111",
                if got.is_some() { "present" } else { "absent" },
                if expected.is_some() {
                    "present"
                } else {
                    "absent"
                }
            ),
        }
    }
}

/// A tensor of `shape` with distinct values, for the cases that need no reference.
fn ramp(shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    (Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * 0.01 + 0.1).reshape(shape)
}

/// Weights of a linear [12, 10] layer holding `tensors`.
fn linear(tensors: &[(&str, Tensor)]) -> ModuleWeights {
    let w = tensors
        .iter()
        .map(|(k, t)| (k.to_string(), t.shallow_clone()))
        .collect();
    module_weights(
        "diffusion_model_input_blocks_1_1_proj_in",
        LayerKind::Linear,
        &[12, 10],
        w,
    )
}

#[test]
fn incomplete_key_sets_are_not_claimed() {
    // What A1111's create_module checks: a partial set is left for another type (or reported
    // as unmatched by the loader), never half-built.
    let sets: Vec<Vec<&str>> = vec![
        vec!["hada_w1_a", "hada_w1_b", "hada_w2_a"],
        vec!["lokr_w1"],
        vec!["lokr_w1_a", "lokr_w2"],
        vec!["w_norm"],
        vec!["a1.weight", "a2.weight", "b1.weight", "b2.weight"],
        vec!["diff_b"],
        vec!["oft_block"],
    ];
    for set in sets {
        let tensors: Vec<(&str, Tensor)> = set.iter().map(|k| (*k, ramp(&[4, 4]))).collect();
        let weights = linear(&tensors);
        assert!(dispatch(&weights).is_none(), "{set:?} was claimed");
    }
}

#[test]
fn malformed_files_are_errors_not_panics() {
    let orig = ramp(&[12, 10]);
    let multipliers = Multipliers {
        te: 1.0,
        unet: 1.0,
        dyn_dim: None,
    };
    // (IA)³ without `on_input`: A1111 fails loading the network.
    let weights = linear(&[("weight", ramp(&[12]))]);
    let (_, built) = dispatch(&weights).unwrap();
    assert!(matches!(built, Err(NetworkError::BadModule { .. })));

    // OFT on a LayerNorm: A1111 has no output size to read there.
    let mut weights = linear(&[("oft_blocks", ramp(&[4, 3, 3]))]);
    weights.layer = LayerKind::LayerNorm;
    weights.weight_shape = vec![12];
    let (_, built) = dispatch(&weights).unwrap();
    assert!(matches!(built, Err(NetworkError::BadModule { .. })));

    // Factors of the wrong rank or shape: an error when applied, not a libtorch panic.
    let broken: Vec<Vec<(&'static str, Tensor)>> = vec![
        vec![
            ("hada_w1_a", ramp(&[12, 4])),
            ("hada_w1_b", ramp(&[4])),
            ("hada_w2_a", ramp(&[12, 4])),
            ("hada_w2_b", ramp(&[4, 10])),
        ],
        vec![
            ("hada_w1_a", ramp(&[12, 4])),
            ("hada_w1_b", ramp(&[4, 10])),
            ("hada_w2_a", ramp(&[12, 3])),
            ("hada_w2_b", ramp(&[4, 10])),
        ],
        vec![("lokr_w1", ramp(&[2])), ("lokr_w2", ramp(&[6, 4]))],
        vec![("diff", ramp(&[12, 10])), ("bias", ramp(&[7]))],
        vec![("diff", ramp(&[12, 10])), ("dora_scale", ramp(&[1, 9]))],
        vec![("weight", ramp(&[11])), ("on_input", Tensor::from(0i64))],
        vec![("oft_blocks", ramp(&[5, 3, 3]))],
        vec![("oft_blocks", ramp(&[2, 4, 4, 4]))],
        vec![("oft_diag", ramp(&[3, 5, 5]))],
    ];
    for (i, tensors) in broken.into_iter().enumerate() {
        let weights = linear(&tensors);
        let (name, built) = dispatch(&weights).unwrap();
        let result = built.and_then(|m| m.calc_updown(&orig, &multipliers).map(|_| ()));
        let error = result.expect_err(&format!("broken case {i} ({name}) was accepted"));
        println!("broken case {i} ({name}): {error}");
    }
}

#[test]
fn stored_tensors_may_live_in_any_dtype() {
    // Files store float16 or bfloat16; the math runs in the layer's dtype, as A1111 casts.
    let orig = ramp(&[12, 10]);
    let multipliers = Multipliers {
        te: 1.0,
        unet: 0.5,
        dyn_dim: None,
    };
    let factors = |kind: Kind| {
        linear(&[
            ("hada_w1_a", ramp(&[12, 2]).to_kind(kind)),
            ("hada_w1_b", ramp(&[2, 10]).to_kind(kind)),
            ("hada_w2_a", ramp(&[12, 2]).to_kind(kind)),
            ("hada_w2_b", ramp(&[2, 10]).to_kind(kind)),
            ("alpha", Tensor::from(1.0f64).to_kind(kind)),
        ])
    };
    let updown = |kind: Kind| {
        let (_, module) = dispatch(&factors(kind)).unwrap();
        module
            .unwrap()
            .calc_updown(&orig, &multipliers)
            .unwrap()
            .updown
    };
    let float = updown(Kind::Float);
    let half = updown(Kind::Half);
    assert_eq!(half.kind(), Kind::Float);
    // Only the factors' own float16 rounding separates the two.
    common::assert_close("float16 factors", &half, &float, 1e-2);
}

#[test]
fn lyco_helpers_match_a1111() {
    let dir = tempfile::tempdir().unwrap();
    common::run_reference("lycoris_reference.py", &[dir.path().as_os_str()]);
    let t = common::read_tensors(&dir.path().join("helpers.safetensors"));
    for (name, dyn_dim) in [
        ("conventional_None", None),
        ("conventional_3", Some(3)),
        ("conventional_9", Some(9)),
        ("conventional_-2", Some(-2)),
    ] {
        let got =
            helpers::rebuild_conventional(&t["up"], &t["down"], &[8, 6, 3, 3], dyn_dim).unwrap();
        common::assert_close(name, &got, &t[name], 1e-6);
    }
    let got = helpers::rebuild_cp_decomposition(&t["up4"], &t["down2"], &t["mid"]).unwrap();
    common::assert_close("cp", &got, &t["cp"], 1e-6);
}
