//! A1111's "Prompt matrix" script (`scripts/prompt_matrix.py`): the prompt `base|a|b|c` makes
//! one image for every subset of the parts after the first, and a grid labelled with the parts
//! each row and column has switched on (`modules/images.py: draw_prompt_matrix`).
//!
//! This file is the combinations, their seeds, the grid's row count and its annotations; the
//! jobs are the runner's and the drawing is the grid module's.

use super::grid::{draw_prompt_matrix, image_grid, GRID_BACKGROUND};
use super::{
    fix_seed, picture_error, plan_jobs, ScriptError, ScriptHost, ScriptImage, ScriptJob,
    ScriptOutcome,
};

/// "Prompt type": which prompt holds the `|` parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptType {
    /// The prompt.
    #[default]
    Positive,
    /// The negative prompt.
    Negative,
}

/// "Joining char".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delimiter {
    /// ", ".
    #[default]
    Comma,
    /// " ".
    Space,
}

/// Why the matrix cannot run (A1111 raises `ValueError` for these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptMatrixError {
    /// Not "positive" or "negative".
    #[error("Unknown prompt type {0}")]
    PromptType(String),
    /// Not "comma" or "space".
    #[error("Unknown variations delimiter {0}")]
    Delimiter(String),
    /// So many parts that the combinations cannot be counted (A1111 would run out of memory).
    #[error(
        "a prompt matrix of {0} parts has too many combinations (at most 16 parts after the first)"
    )]
    TooManyParts(usize),
}

/// The script's arguments in A1111's order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptMatrixArgs {
    /// "Set at prompt start": the chosen parts go before the first part.
    pub put_at_start: bool,
    /// "Random seeds": image i gets seed + i instead of the same seed.
    pub different_seeds: bool,
    /// "Prompt type".
    pub prompt_type: PromptType,
    /// "Joining char".
    pub delimiter: Delimiter,
    /// "Grid margins" in pixels (0–500).
    pub margin_size: u32,
}

/// The most parts after the first: 2¹⁶ images is already far past any useful grid.
const MAX_VARIABLE_PARTS: usize = 16;

impl PromptMatrixArgs {
    /// The arguments from A1111's values, checked as its `run` does.
    pub fn new(
        put_at_start: bool,
        different_seeds: bool,
        prompt_type: &str,
        delimiter: &str,
        margin_size: u32,
    ) -> Result<Self, PromptMatrixError> {
        let prompt_type = match prompt_type {
            "positive" => PromptType::Positive,
            "negative" => PromptType::Negative,
            other => return Err(PromptMatrixError::PromptType(other.into())),
        };
        let delimiter = match delimiter {
            "comma" => Delimiter::Comma,
            "space" => Delimiter::Space,
            other => return Err(PromptMatrixError::Delimiter(other.into())),
        };
        Ok(PromptMatrixArgs {
            put_at_start,
            different_seeds,
            prompt_type,
            delimiter,
            margin_size,
        })
    }

    /// Every combination's prompt, combination `k` holding part `n + 1` when bit `n` of `k` is
    /// set: the parts stripped of whitespace, then of commas, joined after (or before) the
    /// first part, which is left as written.
    pub fn prompts(&self, prompt: &str) -> Result<Vec<String>, PromptMatrixError> {
        let parts: Vec<&str> = prompt.split('|').collect();
        let variable = &parts[1..];
        if variable.len() > MAX_VARIABLE_PARTS {
            return Err(PromptMatrixError::TooManyParts(parts.len()));
        }
        let joiner = match self.delimiter {
            Delimiter::Comma => ", ",
            Delimiter::Space => " ",
        };
        Ok((0..1usize << variable.len())
            .map(|combination| {
                let mut chosen: Vec<&str> = variable
                    .iter()
                    .enumerate()
                    .filter(|(n, _)| combination & (1 << n) != 0)
                    .map(|(_, text)| python_strip(text).trim_matches(','))
                    .collect();
                if self.put_at_start {
                    chosen.push(parts[0]);
                } else {
                    chosen.insert(0, parts[0]);
                }
                chosen.join(joiner)
            })
            .collect())
    }

    /// The seed of image `index` from the fixed seed.
    pub fn seed(&self, seed: i64, index: usize) -> i64 {
        if self.different_seeds {
            seed + index as i64
        } else {
            seed
        }
    }
}

/// Python's `str.strip()`: Unicode whitespace plus the separators `\x1c`–`\x1f`.
pub fn python_strip(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c))
}

/// The grid's row count (`rows=1 << ((len(parts) - 1) // 2)`).
pub fn grid_rows(prompt: &str) -> usize {
    let parts = prompt.split('|').count();
    1 << ((parts - 1) / 2)
}

/// One label of the matrix's legend: a part and whether it is switched on in that row or
/// column (A1111's `GridAnnotation(text, is_active)`; inactive ones are drawn struck through).
pub type MatrixLabel = (String, bool);

/// The legend (`draw_prompt_matrix`): the first half of the variable parts (rounded up) label
/// the columns, the rest the rows; column `pos` lists every horizontal part with `is_active`
/// when bit `i` of `pos` is set, likewise for rows. The parts are as written (not stripped).
pub fn annotations(prompt: &str) -> (Vec<Vec<MatrixLabel>>, Vec<Vec<MatrixLabel>>) {
    let parts: Vec<&str> = prompt.split('|').skip(1).collect();
    let boundary = parts.len().div_ceil(2);
    let (horizontal, vertical) = parts.split_at(boundary);
    let labels = |texts: &[&str]| -> Vec<Vec<MatrixLabel>> {
        (0..1usize << texts.len())
            .map(|pos| {
                texts
                    .iter()
                    .enumerate()
                    .map(|(i, text)| (text.to_string(), pos & (1 << i) != 0))
                    .collect()
            })
            .collect()
    };
    (labels(horizontal), labels(vertical))
}

/// A1111's title.
pub const TITLE: &str = "Prompt matrix";

/// Runs the matrix: one job per combination (the seed fixed first, then `seed + i` with
/// "Random seeds"; the variation seed `subseed + i` as A1111's list of prompts gets), then
/// the labelled grid, first among the images and saved as `prompt_matrix-NNNN.png`. A1111
/// samples the combinations in batches of `batch_size` with a prompt each; one job per image
/// gives the same pictures but for a batched convolution's last bits.
pub fn run(
    args: &PromptMatrixArgs,
    host: &mut dyn ScriptHost,
    base: &ScriptJob,
) -> Result<ScriptOutcome, ScriptError> {
    let mut params = base.params.clone();
    fix_seed(&mut params);
    let prompt = match args.prompt_type {
        PromptType::Positive => params.prompt.clone(),
        PromptType::Negative => params.negative_prompt.clone(),
    };
    let invalid = |e: PromptMatrixError| ScriptError::InvalidArgs {
        script: TITLE,
        message: e.to_string(),
    };
    let prompts = args.prompts(&prompt).map_err(invalid)?;
    let jobs: Vec<ScriptJob> = prompts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut p = params.clone();
            match args.prompt_type {
                PromptType::Positive => p.prompt = text.clone(),
                PromptType::Negative => p.negative_prompt = text.clone(),
            }
            p.seed = args.seed(params.seed, i);
            p.subseed = params.subseed + i as i64;
            p.n_iter = 1;
            p.batch_size = 1;
            ScriptJob {
                params: p,
                init: base.init.clone(),
                checkpoint: base.checkpoint.clone(),
                cell: Vec::new(),
            }
        })
        .collect();
    plan_jobs(host, &jobs);
    let mut outcome = ScriptOutcome {
        grid_basename: "prompt_matrix",
        ..ScriptOutcome::default()
    };
    for job in &jobs {
        if host.stopped() {
            outcome.stopped = true;
            break;
        }
        let done = host.run(job)?;
        outcome
            .images
            .extend(done.images.iter().map(ScriptImage::of));
        if done.cancelled || done.interrupted {
            outcome.stopped = true;
            break;
        }
    }
    if outcome.images.len() == jobs.len() && !outcome.images.is_empty() {
        let pictures: Vec<_> = outcome.images.iter().map(|i| i.image.clone()).collect();
        let first = &outcome.images[0];
        let grid = image_grid(&pictures, grid_rows(&prompt), GRID_BACKGROUND)
            .map_err(|e| picture_error(TITLE, e))?;
        let parts: Vec<String> = prompt.split('|').map(str::to_string).collect();
        let grid = draw_prompt_matrix(
            &grid,
            first.image.width(),
            first.image.height(),
            &parts,
            args.margin_size,
        )
        .map_err(|e| picture_error(TITLE, e))?;
        outcome.grids.push(ScriptImage {
            image: grid,
            infotext: first.infotext.clone(),
            seed: first.seed,
        });
        outcome.saved_grids = 1;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_follow_the_bits_of_their_index() {
        let args = PromptMatrixArgs::default();
        let prompts = args.prompts("a cat| in a hat |, red,").unwrap();
        assert_eq!(
            prompts,
            [
                "a cat",
                "a cat, in a hat",
                "a cat,  red",
                "a cat, in a hat,  red"
            ]
        );
        let at_start = PromptMatrixArgs {
            put_at_start: true,
            delimiter: Delimiter::Space,
            ..Default::default()
        };
        assert_eq!(at_start.prompts("x|y").unwrap(), ["x", "y x"]);
        assert_eq!(grid_rows("a|b|c"), 2);
        assert_eq!(grid_rows("a|b|c|d"), 2);
        assert_eq!(grid_rows("a"), 1);
        assert!(PromptMatrixArgs::new(false, false, "both", "comma", 0).is_err());
    }
}
