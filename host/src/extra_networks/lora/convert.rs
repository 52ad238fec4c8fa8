//! LoRA key names → the checkpoint's layers (A1111's `networks.py:
//! convert_diffusers_name_to_compvis` and the fallbacks of `load_network`), plus the dotted
//! diffusers/PEFT forms diffusers' `load_lora_weights` reads for SD 1.x.
//!
//! A1111 names layers by their module path with `.` → `_` (`diffusion_model_input_blocks_1_1_
//! proj_in`, `transformer_text_model_encoder_layers_0_self_attn_q_proj`; SD2's OpenCLIP
//! `model_transformer_resblocks_0_attn`; SDXL's `0_transformer_…`/`1_model_transformer_…`).
//! A file names them in kohya's diffusers-derived form (`lora_unet_down_blocks_0_attentions_0_
//! …`, `lora_te_text_model_…`), in LDM form (SDXL files), or with dots (PEFT, diffusers).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

/// Where a converted key lands in the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The A1111 name of the layer in the model (a key of [`LayerIndex`]).
    pub layer: String,
    /// For the q/k/v projections of a merged `in_proj` (SD2's OpenCLIP attention): which third
    /// of its rows (0 q, 1 k, 2 v).
    pub chunk: Option<i64>,
}

/// The model's patchable layers by A1111 name, each with its checkpoint key (the prefix of its
/// `.weight`), and whether it is a merged-`in_proj` attention (SD2's `nn.MultiheadAttention`).
#[derive(Clone, Debug, Default)]
pub struct LayerIndex {
    layers: BTreeMap<String, IndexedLayer>,
}

/// One layer of a [`LayerIndex`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedLayer {
    /// Its checkpoint key (without `.weight`).
    pub checkpoint_key: String,
    /// Whether its weight is a merged q/k/v `in_proj_weight`.
    pub merged_qkv: bool,
}

impl LayerIndex {
    /// The index of `checkpoint_keys` (layer keys without `.weight`), named as A1111 names
    /// modules; `clip_prefix` is where this checkpoint's CLIP text model sits.
    pub fn new<'a>(checkpoint_keys: impl IntoIterator<Item = &'a str>, clip_prefix: &str) -> Self {
        let mut layers = BTreeMap::new();
        for key in checkpoint_keys {
            let merged_qkv = key.ends_with(".in_proj");
            let module = key.strip_suffix(".in_proj").unwrap_or(key);
            if let Some(name) = a1111_layer_name(module, clip_prefix) {
                layers.insert(
                    name,
                    IndexedLayer {
                        checkpoint_key: key.to_string(),
                        merged_qkv,
                    },
                );
            }
        }
        Self { layers }
    }

    /// The layer named `name`.
    pub fn get(&self, name: &str) -> Option<&IndexedLayer> {
        self.layers.get(name)
    }

    /// Whether the model has SD2's OpenCLIP text encoder (A1111's `is_sd2`: the module
    /// `model_transformer_resblocks` exists, which SDXL's `1_model_transformer_…` is not).
    pub fn is_sd2(&self) -> bool {
        self.layers
            .keys()
            .any(|k| k.starts_with("model_transformer_resblocks"))
    }

    /// The model's family as A1111's `SdVersion` names it (`SD1`, `SD2`, `SDXL`; the refiner
    /// is `SDXL`), from where its text encoders sit.
    pub fn sd_version(&self) -> &'static str {
        if self.layers.keys().any(|k| k.starts_with("0_")) {
            "SDXL"
        } else if self.is_sd2() {
            "SD2"
        } else {
            "SD1"
        }
    }

    /// The layers, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &IndexedLayer)> {
        self.layers.iter()
    }
}

/// A1111's name of the module at checkpoint key `key` (its `named_modules` path under
/// `sd_model.model` or the text encoder's wrapper, `.` → `_`); `None` outside UNet and text
/// encoders.
pub fn a1111_layer_name(key: &str, clip_prefix: &str) -> Option<String> {
    let underscored = |rest: &str| rest.replace('.', "_");
    if let Some(rest) = key.strip_prefix("model.diffusion_model.") {
        return Some(format!("diffusion_model_{}", underscored(rest)));
    }
    // SDXL's two encoders are named by their place in the conditioner (`0_…`, `1_…`).
    if let Some(rest) = key.strip_prefix("conditioner.embedders.") {
        return Some(underscored(rest));
    }
    // SD2's OpenCLIP (`cond_stage_model.model.transformer…`), before the CLIP rule: the model
    // gives `cond_stage_model.model` as its text encoder's prefix.
    if key.starts_with("cond_stage_model.model.") {
        return key.strip_prefix("cond_stage_model.").map(underscored);
    }
    // SD1's CLIP, whichever transformers layout the checkpoint stores: A1111 loads both into
    // `transformer.text_model`.
    if let Some(rest) = key
        .strip_prefix(clip_prefix)
        .and_then(|r| r.strip_prefix('.'))
    {
        return Some(format!("transformer_text_model_{}", underscored(rest)));
    }
    // SD2's OpenCLIP (`cond_stage_model.model.transformer…`).
    key.strip_prefix("cond_stage_model.").map(underscored)
}

/// Splits a file key into the layer part and the tensor part (`lora_down.weight`, `alpha`,
/// `hada_w1_a`, …). Kohya keys split at the first dot, as A1111 does; dotted diffusers/PEFT
/// keys (`unet.down_blocks.0.….to_q.lora_A.weight`) become the kohya layer name of the same
/// layer (`lora_unet_down_blocks_0_…_to_q`), with diffusers' own tensor names mapped to
/// A1111's (`lora.down.weight`, `lora_linear_layer.up.weight`, `to_q_lora.down.weight`).
pub fn split_key(key: &str) -> (String, String) {
    if let Some((prefix, rest)) = dotted_prefix(key) {
        let (mut layer, part) = dotted_layer_and_part(rest);
        if layer.contains(".processor.") && layer.ends_with("to_out") {
            // Attention processors call the output projection `to_out`; it is `to_out.0`.
            layer.push_str(".0");
        }
        let layer = layer.replace(".processor", "").replace('.', "_");
        return (format!("{prefix}{layer}"), part);
    }
    match key.split_once('.') {
        Some((layer, part)) => (layer.to_string(), part.to_string()),
        None => (key.to_string(), String::new()),
    }
}

/// The kohya prefix for a dotted diffusers key, and the key after its model prefix.
fn dotted_prefix(key: &str) -> Option<(&'static str, &str)> {
    const PREFIXES: &[(&str, &str)] = &[
        ("unet.", "lora_unet_"),
        ("text_encoder.", "lora_te_"),
        ("text_encoder_2.", "lora_te2_"),
    ];
    if let Some(found) = PREFIXES
        .iter()
        .find_map(|(p, k)| key.strip_prefix(p).map(|rest| (*k, rest)))
    {
        return Some(found);
    }
    // UNet-only diffusers files (`load_attn_procs`) name blocks without `unet.`.
    const UNET_BLOCKS: &[&str] = &[
        "down_blocks.",
        "mid_block.",
        "up_blocks.",
        "conv_in.",
        "conv_out.",
        "time_embedding.",
    ];
    UNET_BLOCKS
        .iter()
        .any(|b| key.starts_with(b))
        .then_some(("lora_unet_", key))
}

/// The layer path and A1111's tensor name of a dotted key's tail.
fn dotted_layer_and_part(rest: &str) -> (String, String) {
    // Longest first: the diffusers spellings of LoRA's two matrices and its alpha.
    const SUFFIXES: &[(&str, &str)] = &[
        ("_lora.down.weight", "lora_down.weight"),
        ("_lora.up.weight", "lora_up.weight"),
        (".lora_linear_layer.down.weight", "lora_down.weight"),
        (".lora_linear_layer.up.weight", "lora_up.weight"),
        (".lora.down.weight", "lora_down.weight"),
        (".lora.up.weight", "lora_up.weight"),
        (".lora_A.weight", "lora_down.weight"),
        (".lora_B.weight", "lora_up.weight"),
        (".lora_down.weight", "lora_down.weight"),
        (".lora_up.weight", "lora_up.weight"),
        (".lora_mid.weight", "lora_mid.weight"),
        (".alpha", "alpha"),
        (".dora_scale", "dora_scale"),
    ];
    for (suffix, part) in SUFFIXES {
        if let Some(layer) = rest.strip_suffix(suffix) {
            return (layer.to_string(), part.to_string());
        }
    }
    // Anything else keeps its last two components as the tensor name, so it is reported
    // unmatched under a recognisable layer.
    let mut parts: Vec<&str> = rest.rsplitn(3, '.').collect();
    parts.reverse();
    match parts.as_slice() {
        [layer, a, b] => (layer.to_string(), format!("{a}.{b}")),
        _ => (rest.to_string(), String::new()),
    }
}

/// Kohya's resnet sub-layer names → LDM's (`suffix_conversion` in A1111).
fn resnet_suffix(suffix: &str) -> &str {
    match suffix {
        "conv1" => "in_layers_2",
        "conv2" => "out_layers_3",
        "norm1" => "in_layers_0",
        "norm2" => "out_layers_0",
        "time_emb_proj" => "emb_layers_1",
        "conv_shortcut" => "skip_connection",
        other => other,
    }
}

static RE: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        r"^lora_unet_conv_in(.*)",
        r"^lora_unet_conv_out(.*)",
        r"^lora_unet_time_embedding_linear_(\d+)(.*)",
        r"^lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
        r"^lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)",
        r"^lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
        r"^lora_unet_down_blocks_(\d+)_downsamplers_0_conv",
        r"^lora_unet_up_blocks_(\d+)_upsamplers_0_conv",
        r"^lora_te_text_model_encoder_layers_(\d+)_(.+)",
        r"^lora_te2_text_model_encoder_layers_(\d+)_(.+)",
    ]
    .iter()
    .map(|r| Regex::new(r).expect("valid regex"))
    .collect()
});

/// OpenCLIP's names for CLIP's sub-layers (SD2 and SDXL's second encoder).
fn open_clip_layer(rest: &str) -> String {
    if rest.contains("mlp_fc1") {
        rest.replace("mlp_fc1", "mlp_c_fc")
    } else if rest.contains("mlp_fc2") {
        rest.replace("mlp_fc2", "mlp_c_proj")
    } else {
        rest.replace("self_attn", "attn")
    }
}

/// A1111's `convert_diffusers_name_to_compvis`: a kohya layer name in LDM naming; names it
/// does not know come back unchanged.
pub fn convert_diffusers_name_to_compvis(key: &str, is_sd2: bool) -> String {
    let caps = |i: usize| RE[i].captures(key);
    // Python's ints have no limit; a block number too large for these is no block of any
    // model, so such a name stays as it is and matches nothing, as A1111's would.
    match convert_numbered(key, is_sd2, caps) {
        Some(name) => name,
        None => key.to_string(),
    }
}

/// [`convert_diffusers_name_to_compvis`] with checked block arithmetic (`None`: overflow).
fn convert_numbered<'k>(
    key: &'k str,
    is_sd2: bool,
    caps: impl Fn(usize) -> Option<regex::Captures<'k>>,
) -> Option<String> {
    // `int()` of a matched digit string; the regexes only capture digits.
    let num = |s: &str| s.parse::<i64>().ok();
    // offset + Σ factor·n, or None past i64.
    let index = |offset: i64, terms: &[(i64, &str)]| {
        terms.iter().try_fold(offset, |sum, &(factor, digits)| {
            sum.checked_add(factor.checked_mul(num(digits)?)?)
        })
    };
    if let Some(c) = caps(0) {
        return Some(format!("diffusion_model_input_blocks_0_0{}", &c[1]));
    }
    if let Some(c) = caps(1) {
        return Some(format!("diffusion_model_out_2{}", &c[1]));
    }
    if let Some(c) = caps(2) {
        let n = index(-2, &[(2, &c[1])])?;
        return Some(format!("diffusion_model_time_embed_{n}{}", &c[2]));
    }
    let block_suffix = |kind: &str, suffix: &'_ str| -> String {
        if kind == "resnets" {
            resnet_suffix(suffix).to_string()
        } else {
            suffix.to_string()
        }
    };
    let sub = |kind: &str| if kind == "attentions" { 1 } else { 0 };
    if let Some(c) = caps(3) {
        let n = index(1, &[(3, &c[1]), (1, &c[3])])?;
        return Some(format!(
            "diffusion_model_input_blocks_{n}_{}_{}",
            sub(&c[2]),
            block_suffix(&c[2], &c[4])
        ));
    }
    if let Some(c) = caps(4) {
        let n = if &c[1] == "attentions" {
            1
        } else {
            index(0, &[(2, &c[2])])?
        };
        return Some(format!(
            "diffusion_model_middle_block_{n}_{}",
            block_suffix(&c[1], &c[3])
        ));
    }
    if let Some(c) = caps(5) {
        let n = index(0, &[(3, &c[1]), (1, &c[3])])?;
        return Some(format!(
            "diffusion_model_output_blocks_{n}_{}_{}",
            sub(&c[2]),
            block_suffix(&c[2], &c[4])
        ));
    }
    if let Some(c) = caps(6) {
        let n = index(3, &[(3, &c[1])])?;
        return Some(format!("diffusion_model_input_blocks_{n}_0_op"));
    }
    if let Some(c) = caps(7) {
        let b = num(&c[1])?;
        let n = index(2, &[(3, &c[1])])?;
        return Some(format!(
            "diffusion_model_output_blocks_{n}_{}_conv",
            if b > 0 { 2 } else { 1 }
        ));
    }
    if let Some(c) = caps(8) {
        if is_sd2 {
            return Some(format!(
                "model_transformer_resblocks_{}_{}",
                &c[1],
                open_clip_layer(&c[2])
            ));
        }
        return Some(format!(
            "transformer_text_model_encoder_layers_{}_{}",
            &c[1], &c[2]
        ));
    }
    if let Some(c) = caps(9) {
        return Some(format!(
            "1_model_transformer_resblocks_{}_{}",
            &c[1],
            open_clip_layer(&c[2])
        ));
    }
    Some(key.to_string())
}

static RE_X_PROJ: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(.*)_([qkv])_proj$").expect("valid regex"));

/// A1111's key matching in `load_network`: the model layer kohya layer name `layer` patches,
/// and the A1111 name the module is kept under (`sd_key`), or `None` (an unmatched key).
/// Tries, in A1111's order: the converted name; a q/k/v projection of a merged attention;
/// SDXL's LDM-named `lora_unet_`/`lora_te1_text_model` (also SD1 files named that way); kohya's
/// OFT; KohakuBlueLeaf's OFT.
pub fn match_layer(layer: &str, index: &LayerIndex) -> Option<(String, Target)> {
    let direct = |key: &str| {
        index.get(key).and_then(|l| {
            (!l.merged_qkv).then(|| Target {
                layer: key.to_string(),
                chunk: None,
            })
        })
    };
    let key = convert_diffusers_name_to_compvis(layer, index.is_sd2());
    if let Some(target) = direct(&key) {
        return Some((key, target));
    }
    if let Some(c) = RE_X_PROJ.captures(&key) {
        if index.get(&c[1]).is_some_and(|l| l.merged_qkv) {
            let chunk = match &c[2] {
                "q" => 0,
                "k" => 1,
                _ => 2,
            };
            let target = Target {
                layer: c[1].to_string(),
                chunk: Some(chunk),
            };
            return Some((key, target));
        }
    }
    let replaced = |from: &str, to: &str| layer.replace(from, to);
    let mut candidates = Vec::new();
    if layer.contains("lora_unet") {
        candidates.push(replaced("lora_unet", "diffusion_model"));
    } else if layer.contains("lora_te1_text_model") {
        candidates.push(replaced("lora_te1_text_model", "0_transformer_text_model"));
        // Some SD1 files use these names too.
        candidates.push(replaced("lora_te1_text_model", "transformer_text_model"));
    } else if layer.contains("oft_unet") {
        candidates.push(replaced("oft_unet", "diffusion_model"));
    }
    if let Some(found) = candidates
        .into_iter()
        .find_map(|k| direct(&k).map(|t| (k, t)))
    {
        return Some(found);
    }
    if key.contains("oft_diag") {
        // A1111 assigns twice here, so only the text-encoder replacement takes effect.
        let key = replaced("lora_te1_text_model", "0_transformer_text_model");
        return direct(&key).map(|t| (key, t));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fuzz finding (fuzz/crashes/lora_keys): block numbers past i64 overflowed the index
    /// arithmetic; such a name now stays as it is and matches no layer.
    #[test]
    fn block_numbers_past_the_integers_leave_the_name_unmatched() {
        let huge = "lora_unet_down_blocks_900000000000000000000_attentions_0_proj_in";
        assert_eq!(convert_diffusers_name_to_compvis(huge, false), huge);
        let big = "lora_unet_down_blocks_4000000000000000000_attentions_0_proj_in";
        assert_eq!(convert_diffusers_name_to_compvis(big, false), big);
        assert_eq!(
            convert_diffusers_name_to_compvis(
                "lora_unet_down_blocks_1_attentions_0_proj_in",
                false
            ),
            "diffusion_model_input_blocks_4_1_proj_in"
        );
        assert!(match_layer(big, &sd1_index()).is_none());
    }

    fn sd1_index() -> LayerIndex {
        LayerIndex::new(
            [
                "model.diffusion_model.input_blocks.0.0",
                "model.diffusion_model.input_blocks.1.1.proj_in",
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q",
                "model.diffusion_model.input_blocks.4.0.in_layers.2",
                "model.diffusion_model.input_blocks.3.0.op",
                "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj",
                "model.diffusion_model.middle_block.2.skip_connection",
                "model.diffusion_model.output_blocks.2.1.conv",
                "model.diffusion_model.output_blocks.5.2.conv",
                "model.diffusion_model.output_blocks.3.0.out_layers.3",
                "model.diffusion_model.time_embed.2",
                "model.diffusion_model.out.2",
                "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj",
                "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2",
            ],
            "cond_stage_model.transformer.text_model",
        )
    }

    fn matched(layer: &str, index: &LayerIndex) -> Option<String> {
        match_layer(layer, index).map(|(key, _)| key)
    }

    #[test]
    fn kohya_sd1_names_map_to_ldm_layers() {
        let index = sd1_index();
        for (kohya, ldm) in [
            ("lora_unet_conv_in", "diffusion_model_input_blocks_0_0"),
            (
                "lora_unet_down_blocks_0_attentions_0_proj_in",
                "diffusion_model_input_blocks_1_1_proj_in",
            ),
            (
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                "diffusion_model_input_blocks_1_1_transformer_blocks_0_attn1_to_q",
            ),
            (
                "lora_unet_down_blocks_1_resnets_0_conv1",
                "diffusion_model_input_blocks_4_0_in_layers_2",
            ),
            (
                "lora_unet_down_blocks_0_downsamplers_0_conv",
                "diffusion_model_input_blocks_3_0_op",
            ),
            (
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
                "diffusion_model_middle_block_1_transformer_blocks_0_ff_net_0_proj",
            ),
            (
                "lora_unet_mid_block_resnets_1_conv_shortcut",
                "diffusion_model_middle_block_2_skip_connection",
            ),
            (
                "lora_unet_up_blocks_0_upsamplers_0_conv",
                "diffusion_model_output_blocks_2_1_conv",
            ),
            (
                "lora_unet_up_blocks_1_upsamplers_0_conv",
                "diffusion_model_output_blocks_5_2_conv",
            ),
            (
                "lora_unet_up_blocks_1_resnets_0_conv2",
                "diffusion_model_output_blocks_3_0_out_layers_3",
            ),
            (
                "lora_unet_time_embedding_linear_2",
                "diffusion_model_time_embed_2",
            ),
            ("lora_unet_conv_out", "diffusion_model_out_2"),
            (
                "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
                "transformer_text_model_encoder_layers_0_self_attn_q_proj",
            ),
            (
                "lora_te_text_model_encoder_layers_11_mlp_fc2",
                "transformer_text_model_encoder_layers_11_mlp_fc2",
            ),
            // LDM-named files (SDXL style) also match an SD1 model where the layer exists.
            (
                "lora_unet_input_blocks_1_1_proj_in",
                "diffusion_model_input_blocks_1_1_proj_in",
            ),
            (
                "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                "transformer_text_model_encoder_layers_0_self_attn_q_proj",
            ),
        ] {
            assert_eq!(matched(kohya, &index).as_deref(), Some(ldm), "{kohya}");
        }
        assert_eq!(
            matched("lora_unet_down_blocks_9_attentions_0_proj_in", &index),
            None
        );
        assert_eq!(
            matched("lora_te2_text_model_encoder_layers_0_mlp_fc1", &index),
            None
        );
        assert_eq!(
            index
                .get("transformer_text_model_encoder_layers_0_self_attn_q_proj")
                .unwrap()
                .checkpoint_key,
            "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj"
        );
    }

    #[test]
    fn old_transformers_clip_keys_get_the_same_names() {
        let index = LayerIndex::new(
            ["cond_stage_model.transformer.encoder.layers.0.mlp.fc1"],
            "cond_stage_model.transformer",
        );
        assert!(index
            .get("transformer_text_model_encoder_layers_0_mlp_fc1")
            .is_some());
    }

    #[test]
    fn sd2_text_encoder_maps_qkv_onto_the_merged_in_proj() {
        let index = LayerIndex::new(
            [
                "cond_stage_model.model.transformer.resblocks.0.attn.in_proj",
                "cond_stage_model.model.transformer.resblocks.0.attn.out_proj",
                "cond_stage_model.model.transformer.resblocks.0.mlp.c_fc",
                "cond_stage_model.model.transformer.resblocks.0.mlp.c_proj",
            ],
            // What an SD2 model gives as its text encoder's prefix.
            "cond_stage_model.model",
        );
        assert!(index.is_sd2());
        assert_eq!(index.sd_version(), "SD2");
        let (key, target) = match_layer(
            "lora_te_text_model_encoder_layers_0_self_attn_k_proj",
            &index,
        )
        .unwrap();
        assert_eq!(key, "model_transformer_resblocks_0_attn_k_proj");
        assert_eq!(target.layer, "model_transformer_resblocks_0_attn");
        assert_eq!(target.chunk, Some(1));
        let (key, target) = match_layer(
            "lora_te_text_model_encoder_layers_0_self_attn_out_proj",
            &index,
        )
        .unwrap();
        assert_eq!(key, "model_transformer_resblocks_0_attn_out_proj");
        assert_eq!(target.chunk, None);
        assert_eq!(
            matched("lora_te_text_model_encoder_layers_0_mlp_fc1", &index).as_deref(),
            Some("model_transformer_resblocks_0_mlp_c_fc")
        );
        assert_eq!(
            matched("lora_te_text_model_encoder_layers_0_mlp_fc2", &index).as_deref(),
            Some("model_transformer_resblocks_0_mlp_c_proj")
        );
    }

    #[test]
    fn sdxl_names_use_the_embedder_prefixes() {
        let index = LayerIndex::new(
            [
                "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj",
                "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc",
                "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k",
            ],
            "conditioner.embedders.0.transformer.text_model",
        );
        assert_eq!(
            matched(
                "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                &index
            )
            .as_deref(),
            Some("0_transformer_text_model_encoder_layers_0_self_attn_q_proj")
        );
        assert_eq!(
            matched("lora_te2_text_model_encoder_layers_0_mlp_fc1", &index).as_deref(),
            Some("1_model_transformer_resblocks_0_mlp_c_fc")
        );
        assert_eq!(
            matched(
                "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k",
                &index
            )
            .as_deref(),
            Some("diffusion_model_input_blocks_4_1_transformer_blocks_1_attn2_to_k")
        );
        assert!(!index.is_sd2(), "A1111's is_sd2 is false for SDXL");
        assert_eq!(index.sd_version(), "SDXL");
        // Multipliers: the first 20 characters decide te or unet.
        assert!("1_model_transformer_resblocks_0"[..20].contains("transformer"));
    }

    #[test]
    fn keys_split_as_a1111_and_diffusers_read_them() {
        for (key, layer, part) in [
            ("lora_unet_conv_in.lora_down.weight", "lora_unet_conv_in", "lora_down.weight"),
            ("lora_te_text_model_encoder_layers_0_mlp_fc1.alpha", "lora_te_text_model_encoder_layers_0_mlp_fc1", "alpha"),
            ("bundle_emb.star.string_to_param.*", "bundle_emb", "star.string_to_param.*"),
            (
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                "lora_down.weight",
            ),
            (
                "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight",
                "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
                "lora_up.weight",
            ),
            (
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
                "lora_up.weight",
            ),
            (
                "down_blocks.1.resnets.0.conv1.lora.down.weight",
                "lora_unet_down_blocks_1_resnets_0_conv1",
                "lora_down.weight",
            ),
            (
                "text_encoder.text_model.encoder.layers.3.mlp.fc1.lora_linear_layer.up.weight",
                "lora_te_text_model_encoder_layers_3_mlp_fc1",
                "lora_up.weight",
            ),
            ("unet.mid_block.attentions.0.proj_in.alpha", "lora_unet_mid_block_attentions_0_proj_in", "alpha"),
        ] {
            assert_eq!(split_key(key), (layer.to_string(), part.to_string()), "{key}");
        }
    }
}
