//! `sdhost prompt`: how a prompt is understood — editing schedule, AND parts, emphasis,
//! tokens per chunk with their weights, embeddings used.

use crate::checkpoint::{infer_architecture, Checkpoint};
use crate::prompt::chunks::tokenize_line;
use crate::prompt::editing::{prompt_schedule, split_and};
use crate::prompt::embeddings::{ti_hashes, EmbeddingDatabase};
use crate::prompt::emphasis::parse_prompt_attention;
use crate::prompt::tokenizer::ClipTokenizer;
use std::path::PathBuf;

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
}

/// Runs `sdhost prompt`.
pub fn run(args: &PromptArgs) -> anyhow::Result<()> {
    let width = match &args.model {
        Some(path) => {
            infer_architecture(&Checkpoint::open(path)?)?
                .clip
                .hidden_size
        }
        None => 768,
    };
    let db = match &args.embeddings_dir {
        Some(dir) => EmbeddingDatabase::load_dir(dir, width)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?,
        None => EmbeddingDatabase::default(),
    };
    for skipped in &db.skipped {
        println!("embedding skipped: {skipped}");
    }
    let tokenizer = ClipTokenizer::shared();
    let mut used = Vec::new();
    for (part, (text, weight)) in split_and(&args.prompt).iter().enumerate() {
        println!("AND part {part} (weight {weight}): {text:?}");
        for entry in prompt_schedule(text, args.steps) {
            println!("  model calls ..={}: {:?}", entry.end_at_step, entry.text);
            let fragments: Vec<String> = parse_prompt_attention(&entry.text)
                .iter()
                .map(|f| format!("{:?}×{:.4}", f.text, f.weight))
                .collect();
            println!("    emphasis: {}", fragments.join(" "));
            let tokenized = tokenize_line(&entry.text, &db);
            println!(
                "    {} tokens in {} chunk(s)",
                tokenized.token_count,
                tokenized.chunks.len()
            );
            for (i, chunk) in tokenized.chunks.iter().enumerate() {
                let shown: Vec<String> = chunk
                    .tokens
                    .iter()
                    .zip(&chunk.multipliers)
                    .enumerate()
                    .filter(|(_, (&t, _))| t != crate::prompt::tokenizer::EOS)
                    .map(|(pos, (&t, &w))| {
                        let fix = chunk
                            .fixes
                            .iter()
                            .find(|f| pos > f.offset && pos <= f.offset + f.embedding.len());
                        let text = match fix {
                            Some(f) => format!("<{}>", f.embedding.name),
                            None => tokenizer.token_text(t),
                        };
                        if w == 1.0 {
                            text
                        } else {
                            format!("{text}×{w:.3}")
                        }
                    })
                    .collect();
                println!("    chunk {i}: {}", shown.join(" "));
                used.extend(chunk.fixes.iter().map(|f| f.embedding.clone()));
            }
        }
    }
    if let Some(hashes) = ti_hashes(used.iter().map(|e| e.as_ref())) {
        println!("TI hashes: {hashes}");
    }
    Ok(())
}
