//! `sdhost prompt`: how a prompt is understood — editing schedule, AND parts, emphasis,
//! tokens per chunk with their weights, embeddings used — as text or, with `--json`, as JSON.
//!
//! Both forms are printed from one [`PromptReport`], so they cannot disagree.

use std::path::PathBuf;

use serde::Serialize;

use crate::checkpoint::{infer_architecture, Checkpoint};
use crate::prompt::chunks::{tokenize_line, PromptChunk};
use crate::prompt::editing::{prompt_schedule, split_and};
use crate::prompt::embeddings::{ti_hashes, Embedding, EmbeddingDatabase};
use crate::prompt::emphasis::parse_prompt_attention;
use crate::prompt::tokenizer::{ClipTokenizer, EOS};

/// Arguments of `sdhost prompt`.
#[derive(clap::Args)]
pub struct PromptArgs {
    /// The prompt.
    prompt: String,
    /// Checkpoint whose text encoder width embeddings must match (default: 768, SD 1.x).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Folder of textual-inversion embeddings (A1111's `embeddings/`).
    #[arg(long)]
    embeddings_dir: Option<PathBuf>,
    /// Sampling steps the editing schedule is computed for.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Print the analysis as JSON: token ids, weights, chunks and the schedule.
    #[arg(long)]
    json: bool,
}

/// Everything `sdhost prompt` shows about a prompt.
#[derive(Serialize)]
struct PromptReport {
    /// The prompt as given.
    prompt: String,
    /// The model calls the schedule is computed for.
    steps: usize,
    /// Embedding files that could not be used, with the reason.
    embeddings_skipped: Vec<String>,
    /// The prompt's `AND` parts (A1111's composable diffusion), in order.
    parts: Vec<AndPart>,
    /// Embeddings the prompt uses, once each, in first-use order.
    embeddings_used: Vec<UsedEmbedding>,
    /// The infotext's `TI hashes` value; `None` without embeddings.
    ti_hashes: Option<String>,
}

/// One `AND` part with its weight and its editing/alternation schedule.
#[derive(Serialize)]
struct AndPart {
    /// The part's text, weight suffix removed.
    text: String,
    /// The part's weight (`part :1.5`; 1 without one).
    weight: f64,
    /// The texts used over the model calls, in order.
    schedule: Vec<ScheduleEntry>,
}

/// The text used up to one model call, and how it is tokenised.
#[derive(Serialize)]
struct ScheduleEntry {
    /// Last model call (from 0, inclusive) this text is used for.
    end_at_step: usize,
    /// The text with prompt editing and alternation resolved.
    text: String,
    /// The text split by emphasis, with each piece's weight (`BREAK` has weight −1).
    emphasis: Vec<EmphasisFragment>,
    /// Prompt tokens, without BOS, EOS and padding (A1111's token count).
    token_count: usize,
    /// The 77-token chunks the text encoder sees, one encoder pass each.
    chunks: Vec<ChunkReport>,
}

/// A piece of text and its attention weight.
#[derive(Serialize)]
struct EmphasisFragment {
    text: String,
    weight: f64,
}

/// One chunk: BOS, 75 tokens (EOS-padded), EOS.
#[derive(Serialize)]
struct ChunkReport {
    /// CLIP token ids (0 where an embedding's vectors go).
    token_ids: Vec<u32>,
    /// Each token's text (`<name>` for embedding vectors).
    tokens: Vec<String>,
    /// Each token's attention weight.
    weights: Vec<f64>,
    /// Embeddings placed in the chunk.
    embeddings: Vec<ChunkEmbedding>,
}

/// An embedding's place in a chunk.
#[derive(Serialize)]
struct ChunkEmbedding {
    name: String,
    /// Index in `token_ids` of its first vector.
    start: usize,
    /// Number of vectors (tokens) it takes.
    vectors: usize,
}

/// An embedding the prompt uses.
#[derive(Serialize)]
struct UsedEmbedding {
    name: String,
    /// A1111's short hash, as in `TI hashes`.
    hash: String,
    vectors: usize,
}

impl PromptReport {
    fn new(prompt: &str, steps: usize, db: &EmbeddingDatabase) -> Self {
        let mut used: Vec<std::sync::Arc<Embedding>> = Vec::new();
        let parts = split_and(prompt)
            .into_iter()
            .map(|(text, weight)| {
                let schedule = prompt_schedule(&text, steps)
                    .into_iter()
                    .map(|entry| {
                        let tokenized = tokenize_line(&entry.text, db);
                        for chunk in &tokenized.chunks {
                            used.extend(chunk.fixes.iter().map(|f| f.embedding.clone()));
                        }
                        ScheduleEntry {
                            end_at_step: entry.end_at_step,
                            emphasis: parse_prompt_attention(&entry.text)
                                .into_iter()
                                .map(|f| EmphasisFragment {
                                    text: f.text,
                                    weight: f.weight,
                                })
                                .collect(),
                            token_count: tokenized.token_count,
                            chunks: tokenized.chunks.iter().map(ChunkReport::new).collect(),
                            text: entry.text,
                        }
                    })
                    .collect();
                AndPart {
                    text,
                    weight,
                    schedule,
                }
            })
            .collect();
        let mut embeddings_used: Vec<UsedEmbedding> = Vec::new();
        for embedding in &used {
            if !embeddings_used.iter().any(|e| e.name == embedding.name) {
                embeddings_used.push(UsedEmbedding {
                    name: embedding.name.clone(),
                    hash: embedding.hash.clone(),
                    vectors: embedding.len(),
                });
            }
        }
        PromptReport {
            prompt: prompt.to_string(),
            steps,
            embeddings_skipped: db.skipped.clone(),
            parts,
            embeddings_used,
            ti_hashes: ti_hashes(used.iter().map(|e| e.as_ref())),
        }
    }

    /// The text form.
    fn print(&self) {
        for skipped in &self.embeddings_skipped {
            println!("embedding skipped: {skipped}");
        }
        for (index, part) in self.parts.iter().enumerate() {
            println!("AND part {index} (weight {}): {:?}", part.weight, part.text);
            for entry in &part.schedule {
                println!("  model calls ..={}: {:?}", entry.end_at_step, entry.text);
                let fragments: Vec<String> = entry
                    .emphasis
                    .iter()
                    .map(|f| format!("{:?}×{:.4}", f.text, f.weight))
                    .collect();
                println!("    emphasis: {}", fragments.join(" "));
                println!(
                    "    {} tokens in {} chunk(s)",
                    entry.token_count,
                    entry.chunks.len()
                );
                for (i, chunk) in entry.chunks.iter().enumerate() {
                    // Padding is left out; weights are shown where they are not 1.
                    let shown: Vec<String> = chunk
                        .token_ids
                        .iter()
                        .zip(&chunk.tokens)
                        .zip(&chunk.weights)
                        .filter(|((&id, _), _)| id != EOS)
                        .map(|((_, text), &w)| {
                            if w == 1.0 {
                                text.clone()
                            } else {
                                format!("{text}×{w:.3}")
                            }
                        })
                        .collect();
                    println!("    chunk {i}: {}", shown.join(" "));
                }
            }
        }
        if let Some(hashes) = &self.ti_hashes {
            println!("TI hashes: {hashes}");
        }
    }
}

impl ChunkReport {
    fn new(chunk: &PromptChunk) -> Self {
        let tokenizer = ClipTokenizer::shared();
        // Fix offsets count from the first token after BOS.
        let embeddings: Vec<ChunkEmbedding> = chunk
            .fixes
            .iter()
            .map(|fix| ChunkEmbedding {
                name: fix.embedding.name.clone(),
                start: fix.offset + 1,
                vectors: fix.embedding.len(),
            })
            .collect();
        let tokens = chunk
            .tokens
            .iter()
            .enumerate()
            .map(|(pos, &id)| {
                match embeddings
                    .iter()
                    .find(|e| (e.start..e.start + e.vectors).contains(&pos))
                {
                    Some(e) => format!("<{}>", e.name),
                    None => tokenizer.token_text(id),
                }
            })
            .collect();
        ChunkReport {
            token_ids: chunk.tokens.clone(),
            tokens,
            weights: chunk.multipliers.clone(),
            embeddings,
        }
    }
}

/// Runs `sdhost prompt`.
pub fn run(args: &PromptArgs) -> anyhow::Result<()> {
    let width = match &args.model {
        Some(path) => infer_architecture(&Checkpoint::open(path)?)?
            .text
            .embedding_width(),
        None => 768,
    };
    let db = match &args.embeddings_dir {
        Some(dir) => EmbeddingDatabase::load_dir(dir, width)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?,
        None => EmbeddingDatabase::default(),
    };
    let report = PromptReport::new(&args.prompt, args.steps, &db);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    Ok(())
}
