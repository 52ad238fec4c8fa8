//! Prompt → conditioning tensors: chunks through the family's text encoders with embeddings
//! injected, clip skip, A1111's emphasis weighting, chunk concatenation, SDXL's pooled and
//! size vector, and the per-step schedule of a job.

use super::chunks::{tokenize_line, tokenize_line_with, PromptChunk, TokenizedPrompt};
use super::clean::TextCleaning;
use super::editing::{prompt_schedule, split_and};
use super::embeddings::{Embedding, EmbeddingDatabase};
use super::tokenizer::EOS;
use crate::checkpoint::SIZE_EMBEDDING_DIM;
use crate::models::open_clip::OpenClipTextModel;
use crate::models::text_encoders::TextEncoders;
use crate::models::unet::timestep_embedding;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// What one text gives the UNet: the cross-attention context and, for SDXL, the vector of
/// pooled text and size embeddings (sgm's `crossattn` and `vector`).
#[derive(Debug)]
pub struct Cond {
    /// Context [77·chunks, width].
    pub crossattn: Tensor,
    /// SDXL's `y` [adm_in_channels].
    pub vector: Option<Tensor>,
}

impl Cond {
    /// The same conditioning, sharing the tensors.
    pub fn shallow_clone(&self) -> Self {
        Self {
            crossattn: self.crossattn.shallow_clone(),
            vector: self.vector.as_ref().map(Tensor::shallow_clone),
        }
    }

    /// Token positions of the context (77 per chunk): rows of equal length share a UNet call.
    pub fn tokens(&self) -> i64 {
        self.crossattn.size()[0]
    }
}

impl From<Tensor> for Cond {
    /// A context without a vector (SD 1.x/2.x).
    fn from(crossattn: Tensor) -> Self {
        Self {
            crossattn,
            vector: None,
        }
    }
}

/// The conditioning of several texts encoded together.
#[derive(Debug)]
pub struct BatchCond {
    /// Contexts [B, 77·chunks, width].
    pub crossattn: Tensor,
    /// SDXL's vectors [B, adm_in_channels].
    pub vector: Option<Tensor>,
}

impl BatchCond {
    /// Text `i`'s conditioning.
    pub fn get(&self, i: i64) -> Cond {
        Cond {
            crossattn: self.crossattn.get(i),
            vector: self.vector.as_ref().map(|v| v.get(i)),
        }
    }
}

/// Conditioning of one scheduled text: used for model calls up to `end_at_step`.
#[derive(Debug)]
pub struct ScheduledCond {
    /// Last model call (0-based, inclusive) this applies to.
    pub end_at_step: usize,
    /// Its conditioning.
    pub cond: Cond,
}

/// One `AND` part of a positive prompt: its schedule and weight.
#[derive(Debug)]
pub struct CondPart {
    /// Scheduled conditionings.
    pub schedule: Vec<ScheduledCond>,
    /// The part's weight (`:1.5` after it).
    pub weight: f64,
}

/// The conditioning for model call `call` of a schedule (A1111's selection rule).
pub fn cond_at_call(schedule: &[ScheduledCond], call: usize) -> &Cond {
    &schedule
        .iter()
        .find(|s| call <= s.end_at_step)
        .unwrap_or(&schedule[0])
        .cond
}

/// Why prompts could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum ConditioningError {
    /// SDXL's two tokenizers split a text into different numbers of chunks (their cleaning
    /// differs for text with `<` and HTML entities); A1111 fails on such prompts too.
    #[error(
        "the prompt {text:?} gives {clip_l} chunks with the CLIP-L tokenizer and {big_g} with OpenCLIP's; remove HTML entities next to `<`"
    )]
    ChunkCountMismatch {
        /// The text.
        text: String,
        /// CLIP-L's chunk count.
        clip_l: usize,
        /// bigG's chunk count.
        big_g: usize,
    },
}

/// SDXL's size conditioning (A1111 `sd_models_xl.get_learned_conditioning`): the job's
/// processing size, the crop (A1111 options `sdxl_crop_top`/`sdxl_crop_left`) and the
/// refiner's aesthetic scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizeConditioning {
    /// `original_size_as_tuple` and `target_size_as_tuple`: (height, width).
    pub size: (i64, i64),
    /// `crop_coords_top_left`: (top, left).
    pub crop: (i64, i64),
    /// The refiner's `aesthetic_score` for prompts (`sdxl_refiner_high_aesthetic_score`).
    pub aesthetic_score: f64,
    /// The refiner's `aesthetic_score` for negative prompts (`…_low_aesthetic_score`).
    pub negative_aesthetic_score: f64,
}

impl SizeConditioning {
    /// A1111's defaults for a job of `width`×`height`.
    pub fn new(width: i64, height: i64) -> Self {
        Self {
            size: (height, width),
            crop: (0, 0),
            aesthetic_score: 6.0,
            negative_aesthetic_score: 2.5,
        }
    }
}

impl Default for SizeConditioning {
    /// The size sgm assumes when none is given (1024²).
    fn default() -> Self {
        Self::new(1024, 1024)
    }
}

/// Encodes prompts with the model's text encoders, clip skip and an embeddings database.
pub struct Conditioner<'a> {
    /// The text encoders.
    pub text: &'a TextEncoders,
    /// Textual-inversion embeddings available to prompts.
    pub embeddings: &'a EmbeddingDatabase,
    /// Clip skip (1 = last layer; SD 1.x only, as in A1111).
    pub clip_skip: usize,
    /// SDXL's size/crop/aesthetic conditioning.
    pub size: SizeConditioning,
}

impl<'a> Conditioner<'a> {
    /// A conditioner with A1111's SDXL defaults.
    pub fn new(
        text: &'a TextEncoders,
        embeddings: &'a EmbeddingDatabase,
        clip_skip: usize,
    ) -> Self {
        Self {
            text,
            embeddings,
            clip_skip,
            size: SizeConditioning::default(),
        }
    }

    /// The same conditioner for a job of `width`×`height` (SDXL's size conditioning).
    pub fn with_size(mut self, width: i64, height: i64) -> Self {
        self.size = SizeConditioning::new(width, height);
        self
    }

    /// Encodes prompt `texts` together (emphasis weighting normalises over the whole batch, as
    /// A1111 does for the texts it encodes at once), padded to equal chunks.
    pub fn encode_texts(&self, texts: &[String]) -> Result<BatchCond, ConditioningError> {
        self.encode(texts, false)
    }

    /// Encodes negative-prompt `texts` together: on SDXL all-empty texts give zeros and the
    /// refiner takes the low aesthetic score (A1111 `is_negative_prompt`).
    pub fn encode_negative_texts(&self, texts: &[String]) -> Result<BatchCond, ConditioningError> {
        self.encode(texts, true)
    }

    fn encode(&self, texts: &[String], negative: bool) -> Result<BatchCond, ConditioningError> {
        let tokenize = |cleaning| -> Vec<TokenizedPrompt> {
            texts
                .iter()
                .map(|t| tokenize_line_with(t, self.embeddings, cleaning))
                .collect()
        };
        // Each tokenizer runs only for the encoders that read its tokens.
        let (uses_clip, uses_open_clip) = match self.text {
            TextEncoders::Sd1(_) => (true, false),
            TextEncoders::Sd2(_) | TextEncoders::SdxlRefiner(_) => (false, true),
            TextEncoders::Sdxl { .. } => (true, true),
        };
        let clip = if uses_clip {
            tokenize(TextCleaning::Clip)
        } else {
            Vec::new()
        };
        let open_clip = if uses_open_clip {
            tokenize(TextCleaning::OpenClip)
        } else {
            Vec::new()
        };
        if let TextEncoders::Sdxl { .. } = self.text {
            for ((text, l), g) in texts.iter().zip(&clip).zip(&open_clip) {
                if l.chunks.len() != g.chunks.len() {
                    return Err(ConditioningError::ChunkCountMismatch {
                        text: text.clone(),
                        clip_l: l.chunks.len(),
                        big_g: g.chunks.len(),
                    });
                }
            }
        }
        let mut batch = self.encode_tokens(&clip, &open_clip, negative);
        // A1111 zeroes SDXL's text conditioning when every text of a negative prompt is empty
        // (`force_zero_embeddings`): context and pooled text, not the size embeddings.
        if negative && texts.iter().all(String::is_empty) {
            if let (Some(vector), Some(pooled)) = (&batch.vector, self.text_pooled_dim()) {
                batch.crossattn = batch.crossattn.zeros_like();
                let zeros = vector.narrow(1, 0, pooled).zeros_like();
                batch.vector = Some(Tensor::cat(
                    &[zeros, vector.narrow(1, pooled, vector.size()[1] - pooled)],
                    1,
                ));
            }
        }
        Ok(batch)
    }

    /// Encodes already tokenized prompts as prompts (not negative): the same chunks go to
    /// every encoder (see [`Conditioner::encode_texts`]).
    pub fn encode_tokenized(&self, prompts: &[TokenizedPrompt]) -> BatchCond {
        self.encode_tokens(prompts, prompts, false)
    }

    /// Runs each encoder on its tokens: `clip` for CLIP ViT-L (SD1, SDXL's first), `open_clip`
    /// for OpenCLIP (SD2, SDXL's bigG, the refiner).
    fn encode_tokens(
        &self,
        clip: &[TokenizedPrompt],
        open_clip: &[TokenizedPrompt],
        negative: bool,
    ) -> BatchCond {
        match self.text {
            TextEncoders::Sd1(model) => BatchCond {
                crossattn: per_chunk(clip, |chunks| {
                    let ids = chunk_ids(chunks, false, model.device());
                    let embeds = inject_embeddings(model.embed_tokens(&ids), chunks, 0);
                    let states = model.hidden_states_from_embeddings(&embeds);
                    let pick = states.len().saturating_sub(self.clip_skip.max(1));
                    emphasis(&model.final_layer_norm(&states[pick]), chunks)
                }),
                vector: None,
            },
            // Clip skip does not reach OpenCLIP in A1111: always the penultimate block,
            // through `ln_final`.
            TextEncoders::Sd2(model) => BatchCond {
                crossattn: per_chunk(open_clip, |chunks| {
                    let ids = chunk_ids(chunks, true, model.device());
                    let embeds = inject_embeddings(model.embed_tokens(&ids), chunks, 0);
                    let blocks = model.layers().saturating_sub(1);
                    let states = model.hidden_states_from_embeddings(&embeds, blocks);
                    let last = states.last().expect("states start non-empty");
                    emphasis(&model.ln_final(last), chunks)
                }),
                vector: None,
            },
            TextEncoders::Sdxl { clip_l, big_g } => {
                let context_l = per_chunk(clip, |chunks| {
                    let ids = chunk_ids(chunks, false, clip_l.device());
                    let embeds = inject_embeddings(clip_l.embed_tokens(&ids), chunks, 0);
                    let states = clip_l.hidden_states_from_embeddings(&embeds);
                    // sgm's `layer: hidden, layer_idx: 11`: the penultimate layer, no final norm.
                    emphasis(&states[states.len() - 2], chunks)
                });
                let width_l = clip_l.config().hidden_size;
                let (context_g, pooled) = self.encode_big_g(big_g, open_clip, width_l);
                BatchCond {
                    crossattn: Tensor::cat(&[context_l, context_g], -1),
                    vector: Some(self.vector(&pooled, negative, false)),
                }
            }
            TextEncoders::SdxlRefiner(big_g) => {
                let (crossattn, pooled) = self.encode_big_g(big_g, open_clip, 0);
                BatchCond {
                    crossattn,
                    vector: Some(self.vector(&pooled, negative, true)),
                }
            }
        }
    }

    fn text_pooled_dim(&self) -> Option<i64> {
        match self.text {
            TextEncoders::Sdxl { big_g, .. } | TextEncoders::SdxlRefiner(big_g) => {
                big_g.config().projection_dim
            }
            _ => None,
        }
    }

    /// bigG's context (penultimate block, no `ln_final`, emphasis applied) and the pooled
    /// vector of each text's first chunk before emphasis (sgm `FrozenOpenCLIPEmbedder2`,
    /// A1111 `TextConditionalModel.forward`). Embedding vectors start at column `offset`.
    fn encode_big_g(
        &self,
        big_g: &OpenClipTextModel,
        prompts: &[TokenizedPrompt],
        offset: i64,
    ) -> (Tensor, Tensor) {
        let mut pooled = None;
        let context = per_chunk(prompts, |chunks| {
            let ids = chunk_ids(chunks, true, big_g.device());
            let embeds = inject_embeddings(big_g.embed_tokens(&ids), chunks, offset);
            let states = big_g.hidden_states_from_embeddings(&embeds, big_g.layers());
            if pooled.is_none() {
                pooled = big_g.pooled(states.last().expect("states start non-empty"), &ids);
            }
            emphasis(&states[states.len() - 2], chunks)
        });
        let pooled = pooled.expect("SDXL's bigG has a text projection (checked at load)");
        (context, pooled)
    }

    /// SDXL's `vector` [B, adm]: the pooled text, then 256 sinusoidal values for each of
    /// original height, width, crop top, left, target height, width (the refiner: original
    /// size, crop and the aesthetic score) (sgm `ConcatTimestepEmbedderND`).
    fn vector(&self, pooled: &Tensor, negative: bool, refiner: bool) -> Tensor {
        let s = &self.size;
        let (h, w) = (s.size.0 as f64, s.size.1 as f64);
        let (top, left) = (s.crop.0 as f64, s.crop.1 as f64);
        let scalars: Vec<f32> = if refiner {
            let aesthetic = if negative {
                s.negative_aesthetic_score
            } else {
                s.aesthetic_score
            };
            vec![h, w, top, left, aesthetic]
        } else {
            vec![h, w, top, left, h, w]
        }
        .into_iter()
        .map(|v| v as f32)
        .collect();
        let sizes = timestep_embedding(
            &Tensor::from_slice(&scalars).to_device(pooled.device()),
            SIZE_EMBEDDING_DIM,
        )
        .reshape([1, -1])
        .to_kind(pooled.kind())
        .repeat([pooled.size()[0], 1]);
        Tensor::cat(&[pooled.shallow_clone(), sizes], 1)
    }

    /// The encoding of the empty prompt [77, width] (what pads a shorter cond or uncond).
    pub fn empty_prompt(&self) -> Result<Tensor, ConditioningError> {
        Ok(self.encode_texts(&[String::new()])?.crossattn.get(0))
    }

    /// Extends `cond` [77·k, width] to `chunks` chunks with empty-prompt encodings, as A1111's
    /// `pad_cond_uncond` option does so that cond and uncond of different lengths share a batch.
    pub fn pad_to_chunks(&self, cond: &Tensor, chunks: usize) -> Result<Tensor, ConditioningError> {
        let have = cond.size()[0] / 77;
        let missing = chunks as i64 - have;
        if missing <= 0 {
            return Ok(cond.shallow_clone());
        }
        Ok(Tensor::cat(
            &[
                cond.shallow_clone(),
                self.empty_prompt()?.repeat([missing, 1]),
            ],
            0,
        ))
    }

    /// The schedule of one prompt over `steps` model calls: all its scheduled texts are encoded
    /// together, as A1111 encodes them.
    pub fn schedule(
        &self,
        prompt: &str,
        steps: usize,
    ) -> Result<Vec<ScheduledCond>, ConditioningError> {
        self.scheduled(prompt, steps, false)
    }

    /// The schedule of a negative prompt (see [`Conditioner::encode_negative_texts`]).
    pub fn negative_schedule(
        &self,
        prompt: &str,
        steps: usize,
    ) -> Result<Vec<ScheduledCond>, ConditioningError> {
        self.scheduled(prompt, steps, true)
    }

    fn scheduled(
        &self,
        prompt: &str,
        steps: usize,
        negative: bool,
    ) -> Result<Vec<ScheduledCond>, ConditioningError> {
        let schedule = prompt_schedule(prompt, steps);
        let texts: Vec<String> = schedule.iter().map(|s| s.text.clone()).collect();
        let conds = self.encode(&texts, negative)?;
        Ok(schedule
            .iter()
            .enumerate()
            .map(|(i, s)| ScheduledCond {
                end_at_step: s.end_at_step,
                cond: conds.get(i as i64),
            })
            .collect())
    }

    /// A positive prompt: its `AND` parts, each scheduled, with weights.
    pub fn multicond(
        &self,
        prompt: &str,
        steps: usize,
    ) -> Result<Vec<CondPart>, ConditioningError> {
        split_and(prompt)
            .into_iter()
            .map(|(text, weight)| {
                Ok(CondPart {
                    schedule: self.schedule(&text, steps)?,
                    weight,
                })
            })
            .collect()
    }

    /// The embeddings the prompt and negative prompt use over `steps` model calls, in
    /// first-use order (for the infotext's `TI hashes`).
    pub fn embeddings_used(
        &self,
        prompt: &str,
        negative_prompt: &str,
        steps: usize,
    ) -> Vec<Arc<Embedding>> {
        let mut texts: Vec<String> = split_and(prompt)
            .into_iter()
            .flat_map(|(text, _)| prompt_schedule(&text, steps))
            .map(|scheduled| scheduled.text)
            .collect();
        texts.extend(
            prompt_schedule(negative_prompt, steps)
                .into_iter()
                .map(|scheduled| scheduled.text),
        );
        texts
            .iter()
            .flat_map(|text| tokenize_line(text, self.embeddings).chunks)
            .flat_map(|chunk| chunk.fixes.into_iter().map(|fix| fix.embedding))
            .collect()
    }
}

/// Runs `encode` on each chunk index of `prompts` (texts with fewer chunks get empty ones) and
/// joins the results along the tokens.
fn per_chunk(
    prompts: &[TokenizedPrompt],
    mut encode: impl FnMut(&[&PromptChunk]) -> Tensor,
) -> Tensor {
    let count = prompts.iter().map(|p| p.chunks.len()).max().unwrap_or(1);
    let empty = PromptChunk::empty();
    let per_chunk: Vec<Tensor> = (0..count)
        .map(|i| {
            let batch: Vec<&PromptChunk> = prompts
                .iter()
                .map(|p| p.chunks.get(i).unwrap_or(&empty))
                .collect();
            encode(&batch)
        })
        .collect();
    Tensor::cat(&per_chunk, 1)
}

/// Token ids [B, 77] of a chunk batch; OpenCLIP's wrapper overwrites everything after the
/// first end-of-text with 0 (A1111 `FrozenOpenCLIPEmbedderWithCustomWords`, `id_pad = 0`).
fn chunk_ids(batch: &[&PromptChunk], zero_after_eos: bool, device: Device) -> Tensor {
    let len = batch[0].tokens.len() as i64;
    let ids: Vec<i64> = batch
        .iter()
        .flat_map(|c| {
            let mut seen_eos = false;
            c.tokens.iter().map(move |&t| {
                let id = if seen_eos && zero_after_eos {
                    0
                } else {
                    t as i64
                };
                seen_eos |= t == EOS;
                id
            })
        })
        .collect();
    Tensor::from_slice(&ids)
        .view([batch.len() as i64, len])
        .to_device(device)
}

/// Writes each chunk's embedding vectors (columns `offset..` of them: SDXL embeddings hold
/// CLIP-L's and bigG's side by side) over the token embeddings, after BOS; an embedding
/// running past the chunk end is cut there.
fn inject_embeddings(embeds: Tensor, batch: &[&PromptChunk], offset: i64) -> Tensor {
    let (len, width) = (embeds.size()[1], embeds.size()[2]);
    for (b, chunk) in batch.iter().enumerate() {
        for fix in &chunk.fixes {
            let start = fix.offset as i64 + 1;
            let n = (fix.embedding.len() as i64).min(len - start);
            if n > 0 && fix.embedding.width >= offset + width {
                let vectors = fix
                    .embedding
                    .tensor()
                    .narrow(0, 0, n)
                    .narrow(1, offset, width)
                    .to_kind(embeds.kind())
                    .to_device(embeds.device());
                embeds.get(b as i64).narrow(0, start, n).copy_(&vectors);
            }
        }
    }
    embeds
}

/// A1111's "Original" emphasis: scale each token by its weight, then restore the mean of the
/// whole chunk batch.
fn emphasis(z: &Tensor, batch: &[&PromptChunk]) -> Tensor {
    let len = batch[0].multipliers.len() as i64;
    let weights: Vec<f32> = batch
        .iter()
        .flat_map(|c| c.multipliers.iter().map(|&w| w as f32))
        .collect();
    let weights = Tensor::from_slice(&weights)
        .view([batch.len() as i64, len, 1])
        .to_device(z.device())
        .to_kind(z.kind());
    let original_mean = z.mean(Kind::Float);
    let z = z * weights;
    let new_mean = z.mean(Kind::Float);
    &z * (original_mean / new_mean).to_kind(z.kind())
}
