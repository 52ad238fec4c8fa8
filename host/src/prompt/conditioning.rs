//! Prompt → conditioning tensors: chunks through CLIP with embeddings injected, clip skip,
//! A1111's emphasis weighting, chunk concatenation, and the per-step schedule of a job.

use super::chunks::{tokenize_line, PromptChunk, TokenizedPrompt};
use super::editing::{prompt_schedule, split_and};
use super::embeddings::{Embedding, EmbeddingDatabase};
use crate::models::clip::ClipTextModel;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Conditioning of one scheduled text: used for model calls up to `end_at_step`.
#[derive(Debug)]
pub struct ScheduledCond {
    /// Last model call (0-based, inclusive) this applies to.
    pub end_at_step: usize,
    /// Conditioning [77·chunks, width].
    pub cond: Tensor,
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
pub fn cond_at_call(schedule: &[ScheduledCond], call: usize) -> &Tensor {
    &schedule
        .iter()
        .find(|s| call <= s.end_at_step)
        .unwrap_or(&schedule[0])
        .cond
}

/// Encodes prompts with a text encoder, clip skip and an embeddings database.
pub struct Conditioner<'a> {
    /// The text encoder.
    pub clip: &'a ClipTextModel,
    /// Textual-inversion embeddings available to prompts.
    pub embeddings: &'a EmbeddingDatabase,
    /// Clip skip (1 = last layer).
    pub clip_skip: usize,
}

impl Conditioner<'_> {
    /// Encodes `texts` together (emphasis weighting normalises over the whole batch, as A1111
    /// does for the texts it encodes at once): [B, 77·chunks, width], padded to equal chunks.
    pub fn encode_texts(&self, texts: &[String]) -> Tensor {
        let tokenized: Vec<TokenizedPrompt> = texts
            .iter()
            .map(|t| tokenize_line(t, self.embeddings))
            .collect();
        self.encode_tokenized(&tokenized)
    }

    /// Encodes already tokenized prompts (see [`Conditioner::encode_texts`]).
    pub fn encode_tokenized(&self, prompts: &[TokenizedPrompt]) -> Tensor {
        let count = prompts.iter().map(|p| p.chunks.len()).max().unwrap_or(1);
        let empty = PromptChunk::empty();
        let per_chunk: Vec<Tensor> = (0..count)
            .map(|i| {
                let batch: Vec<&PromptChunk> = prompts
                    .iter()
                    .map(|p| p.chunks.get(i).unwrap_or(&empty))
                    .collect();
                self.encode_chunk_batch(&batch)
            })
            .collect();
        Tensor::cat(&per_chunk, 1)
    }

    fn encode_chunk_batch(&self, batch: &[&PromptChunk]) -> Tensor {
        let device = self.clip.device();
        let ids: Vec<i64> = batch
            .iter()
            .flat_map(|c| c.tokens.iter().map(|&t| t as i64))
            .collect();
        let len = batch[0].tokens.len() as i64;
        let ids = Tensor::from_slice(&ids)
            .view([batch.len() as i64, len])
            .to_device(device);
        let embeds = self.clip.embed_tokens(&ids);
        for (b, chunk) in batch.iter().enumerate() {
            for fix in &chunk.fixes {
                // Vectors go after BOS; an embedding running past the chunk end is cut there.
                let start = fix.offset as i64 + 1;
                let n = (fix.embedding.len() as i64).min(len - start);
                if n > 0 {
                    let vectors = fix
                        .embedding
                        .tensor()
                        .narrow(0, 0, n)
                        .to_kind(embeds.kind())
                        .to_device(device);
                    embeds.get(b as i64).narrow(0, start, n).copy_(&vectors);
                }
            }
        }
        let states = self.clip.hidden_states_from_embeddings(&embeds);
        let pick = states.len().saturating_sub(self.clip_skip.max(1));
        let z = self.clip.final_layer_norm(&states[pick]);

        // A1111 "Original" emphasis: scale by the weights, then restore the batch mean.
        let weights: Vec<f32> = batch
            .iter()
            .flat_map(|c| c.multipliers.iter().map(|&w| w as f32))
            .collect();
        let weights = Tensor::from_slice(&weights)
            .view([batch.len() as i64, len, 1])
            .to_device(device)
            .to_kind(z.kind());
        let original_mean = z.mean(Kind::Float);
        let z = z * weights;
        let new_mean = z.mean(Kind::Float);
        &z * (original_mean / new_mean).to_kind(z.kind())
    }

    /// The encoding of the empty prompt [77, width] (also what an empty negative prompt is).
    pub fn empty_prompt(&self) -> Tensor {
        self.encode_texts(&[String::new()]).get(0)
    }

    /// Extends `cond` [77·k, width] to `chunks` chunks with empty-prompt encodings, as A1111's
    /// `pad_cond_uncond` option does so that cond and uncond of different lengths share a batch.
    pub fn pad_to_chunks(&self, cond: &Tensor, chunks: usize) -> Tensor {
        let have = cond.size()[0] / 77;
        let missing = chunks as i64 - have;
        if missing <= 0 {
            return cond.shallow_clone();
        }
        Tensor::cat(
            &[
                cond.shallow_clone(),
                self.empty_prompt().repeat([missing, 1]),
            ],
            0,
        )
    }

    /// The schedule of one prompt over `steps` model calls: all its scheduled texts are encoded
    /// together, as A1111 encodes them.
    pub fn schedule(&self, prompt: &str, steps: usize) -> Vec<ScheduledCond> {
        let schedule = prompt_schedule(prompt, steps);
        let texts: Vec<String> = schedule.iter().map(|s| s.text.clone()).collect();
        let conds = self.encode_texts(&texts);
        schedule
            .iter()
            .enumerate()
            .map(|(i, s)| ScheduledCond {
                end_at_step: s.end_at_step,
                cond: conds.get(i as i64),
            })
            .collect()
    }

    /// A positive prompt: its `AND` parts, each scheduled, with weights.
    pub fn multicond(&self, prompt: &str, steps: usize) -> Vec<CondPart> {
        split_and(prompt)
            .into_iter()
            .map(|(text, weight)| CondPart {
                schedule: self.schedule(&text, steps),
                weight,
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
