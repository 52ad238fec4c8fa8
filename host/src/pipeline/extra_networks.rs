//! The extra-networks stage of a job (A1111's `modules/extra_networks.py: activate`, run in
//! `process_images_inner` before the prompts are encoded): the positive prompt's `<type:…>`
//! tags are taken out of what CLIP sees, the first prompt's tags are the batch's networks, and
//! each kind of network is activated (LoRA/LyCORIS patch the weights; their bundled embeddings
//! join the job's). The infotext keeps the prompt as written, tags included, so `--from-png`
//! re-applies them. Each kind of network is one call in [`activate_extra_networks`].

use crate::extra_networks::lora::apply::SetKey;
use crate::extra_networks::lora::LoraActivation;
use crate::extra_networks::{parse_prompt, ExtraNetworkData, ExtraNetworkParams};
use crate::prompt::embeddings::EmbeddingDatabase;

use super::model::GenerationModel;

/// The tag types sdhost handles (`hypernet` by `GenerationModel::activate_hypernetworks`);
/// other tags are removed from the prompt and reported.
const KNOWN_TYPES: &[&str] = &["lora", "lyco", "hypernet"];

/// What the extra networks give the rest of the job.
pub struct JobNetworks {
    /// The positive prompt without its tags: what is encoded.
    pub prompt: String,
    /// For the user (missing files, unmatched keys, …); the job runs regardless.
    pub warnings: Vec<String>,
    /// Infotext `Lora hashes`.
    pub lora_hashes: Option<String>,
    /// The model's embeddings plus those bundled in active networks, when there are any.
    pub embeddings: Option<EmbeddingDatabase>,
    /// The same for the job's refiner, when it has one.
    pub refiner: Option<Box<JobNetworks>>,
    /// The LoRA set patched into the model's weights (empty: its own weights).
    pub lora_set: SetKey,
    /// Layers the activation restored or patched (0: the set was applied already).
    pub lora_changed_layers: usize,
}

impl JobNetworks {
    /// The embeddings the job's prompts use.
    pub fn embeddings<'a>(&'a self, model: &'a GenerationModel) -> &'a EmbeddingDatabase {
        self.embeddings.as_ref().unwrap_or(&model.embeddings)
    }
}

/// A1111 registers `lyco` as an alias of `lora` and activates each tag type present in prompt
/// order, each call replacing the set, so with both present the type whose first tag comes
/// later decides the set.
fn lora_tags(data: &ExtraNetworkData, prompt: &str) -> Vec<ExtraNetworkParams> {
    let first = |kind: &str| prompt.find(&format!("<{kind}:"));
    let kind = match (data.get("lora"), data.get("lyco")) {
        (Some(_), Some(_)) if first("lyco") > first("lora") => "lyco",
        (Some(_), _) => "lora",
        (None, Some(_)) => "lyco",
        (None, None) => return Vec::new(),
    };
    data[kind].clone()
}

/// Activates the networks `prompt` names on `model` (an untagged prompt restores the model's
/// own weights) and returns the prompt to encode.
pub fn activate_extra_networks(model: &GenerationModel, prompt: &str) -> JobNetworks {
    let (stripped, data) = parse_prompt(prompt);
    let mut warnings = Vec::new();
    for kind in data.keys().filter(|k| !KNOWN_TYPES.contains(&k.as_str())) {
        warnings.push(format!(
            "<{kind}:…> is not an extra network sdhost knows; the tag was removed from the prompt"
        ));
    }
    let tags = lora_tags(&data, prompt);
    let lora: LoraActivation = {
        // A poisoned lock only means an earlier job panicked while holding it; the patch state
        // itself is kept consistent layer by layer.
        let mut state = model.lora.lock().unwrap_or_else(|e| e.into_inner());
        let sd = &model.sd;
        state.activate(
            &tags,
            &model.network_dirs.lora,
            &sd.layers,
            sd.architecture.text.clip_prefix(),
            sd.architecture.text.embedding_width(),
        )
    };
    warnings.extend(lora.warnings);
    let embeddings = (!lora.embeddings.is_empty()).then(|| {
        let mut db = model.embeddings.clone();
        for embedding in lora.embeddings {
            // A1111 keeps the embeddings folder's file when a bundled one has its name.
            if db.contains(&embedding.name) {
                warnings.push(format!(
                    "bundled embedding {} skipped: already loaded from the embeddings folder",
                    embedding.name
                ));
            } else {
                db.add(embedding);
            }
        }
        db
    });
    JobNetworks {
        prompt: stripped,
        warnings,
        lora_hashes: lora.lora_hashes,
        embeddings,
        refiner: None,
        lora_set: lora.set,
        lora_changed_layers: lora.changed_layers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extra_networks::parse_prompt;

    #[test]
    fn with_lora_and_lyco_tags_the_later_type_is_the_set() {
        let prompt = "<lyco:a:1> x <lora:b:1> <lyco:c:1>";
        let (_, data) = parse_prompt(prompt);
        let tags = lora_tags(&data, prompt);
        assert_eq!(tags.len(), 1);
        assert_eq!(tags[0].positional[0], "b");
        let prompt = "<lora:b:1> <lyco:a:1>";
        let (_, data) = parse_prompt(prompt);
        assert_eq!(lora_tags(&data, prompt)[0].positional[0], "a");
    }
}
