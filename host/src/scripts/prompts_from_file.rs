//! A1111's "Prompts from file or textbox" script (`scripts/prompts_from_file.py`): one job per
//! non-empty line. A line without `--` is a prompt; a line with `--` is read like a command line
//! (`cmdargs`: Python's `shlex.split`, then `--tag value` pairs, `--prompt` and
//! `--negative_prompt` taking every word up to the next `--…`), and a line that does not parse
//! is, as in A1111, used whole as the prompt (sdhost also reports a warning).
//!
//! The tags and their types are A1111 v1.10.1's `prompt_tags`. Those sdhost's request has are
//! applied; `--sampler_index` is read and ignored, as A1111 ignores `p.sampler_index`; the
//! others (`--styles`, `--restore_faces`, `--tiling`, `--outpath_samples`, …) are refused with an
//! error before anything runs, since sdhost cannot do what they ask.

use super::{plan_jobs, ScriptError, ScriptHost, ScriptImage, ScriptJob, ScriptOutcome};

use crate::request::GenerationRequest;

/// One line's `--tag value` settings, as A1111's `cmdargs` returns them (values converted).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LineArgs {
    /// `--prompt`.
    pub prompt: Option<String>,
    /// `--negative_prompt`.
    pub negative_prompt: Option<String>,
    /// `--sd_model`: a checkpoint name for this line's job.
    pub sd_model: Option<String>,
    /// `--seed`.
    pub seed: Option<i64>,
    /// `--subseed`.
    pub subseed: Option<i64>,
    /// `--subseed_strength`.
    pub subseed_strength: Option<f64>,
    /// `--seed_resize_from_h`.
    pub seed_resize_from_h: Option<i64>,
    /// `--seed_resize_from_w`.
    pub seed_resize_from_w: Option<i64>,
    /// `--sampler_name` as written (A1111 looks it up lower-cased among names and aliases).
    pub sampler_name: Option<String>,
    /// `--batch_size`.
    pub batch_size: Option<i64>,
    /// `--n_iter`.
    pub n_iter: Option<i64>,
    /// `--steps`.
    pub steps: Option<i64>,
    /// `--cfg_scale`.
    pub cfg_scale: Option<f64>,
    /// `--width`.
    pub width: Option<i64>,
    /// `--height`.
    pub height: Option<i64>,
    /// Tags A1111 knows that sdhost's request has no field for, in the order written.
    pub unsupported: Vec<String>,
}

/// Why `cmdargs` fails (A1111's assertion and conversion errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdArgsError {
    /// `shlex.split` failed.
    #[error("{0}")]
    Shlex(&'static str),
    /// A word where a `--tag` was expected.
    #[error("must start with \"--\": {0}")]
    NotATag(String),
    /// A `--tag` at the end of the line.
    #[error("missing argument for command line option {0}")]
    MissingValue(String),
    /// A tag A1111 does not know.
    #[error("unknown commandline option: {0}")]
    UnknownTag(String),
    /// `int()` or `float()` refused the value.
    #[error("invalid value for {tag}: {value:?}")]
    Value {
        /// The tag.
        tag: String,
        /// Its value.
        value: String,
    },
}

/// Why a line's job cannot run as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A tag sdhost cannot honour.
    #[error("line {line}: --{tag} is not supported by sdhost")]
    Unsupported {
        /// 1-based number among the non-empty lines.
        line: usize,
        /// The tag.
        tag: String,
    },
    /// `--sampler_name` names no sampler.
    #[error("line {line}: unknown sampler {name:?}")]
    UnknownSampler {
        /// 1-based number among the non-empty lines.
        line: usize,
        /// The name as written.
        name: String,
    },
    /// A value the request does not accept (negative size, count …).
    #[error("line {line}: --{tag} {value} is out of range")]
    OutOfRange {
        /// 1-based number among the non-empty lines.
        line: usize,
        /// The tag.
        tag: &'static str,
        /// The value.
        value: String,
    },
}

/// "Insert prompts at the" start or end of the request's prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptPosition {
    /// The line's prompt, a space, the request's.
    #[default]
    Start,
    /// The request's prompt, a space, the line's.
    End,
}

/// The script's arguments in A1111 v1.10.1's order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptsFromFileArgs {
    /// "Iterate seed every line": after each line the seed grows by batch size × batch count.
    pub iterate_seed: bool,
    /// "Use same random seed for all lines": a random seed (-1) is drawn once for all lines.
    pub same_random_seed: bool,
    /// "Insert prompts at the".
    pub prompt_position: PromptPosition,
    /// "List of prompt inputs".
    pub text: String,
}

/// One line, parsed: its settings, and why it fell back to being a prompt, if it did.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The settings.
    pub args: LineArgs,
    /// The `cmdargs` error that made A1111 use the whole line as the prompt.
    pub fallback: Option<CmdArgsError>,
}

/// Python's `str.splitlines()` boundaries.
fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r'
            | '\x0b'
            | '\x0c'
            | '\x1c'
            | '\x1d'
            | '\x1e'
            | '\u{85}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// The non-empty lines, stripped (`[x.strip() for x in text.splitlines()]`, empties dropped).
pub fn lines(text: &str) -> Vec<&str> {
    // "\r\n" is one break; splitting at both and dropping the empty piece between is the same
    // once empty lines are dropped.
    text.split(is_line_break)
        .map(super::prompt_matrix::python_strip)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Python's `shlex.split(line)` (POSIX mode, no comments).
pub fn shlex_split(line: &str) -> Result<Vec<String>, CmdArgsError> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Space,
        Word,
        Quote(char),
        Escape(Option<char>),
    }
    let whitespace = |c: char| matches!(c, ' ' | '\t' | '\r' | '\n');
    let mut words = Vec::new();
    let mut token = String::new();
    let mut quoted = false;
    let mut state = State::Space;
    let mut chars = line.chars();
    loop {
        let next = chars.next();
        match (state, next) {
            (State::Space, None) | (State::Word, None) => {
                if !token.is_empty() || quoted {
                    words.push(std::mem::take(&mut token));
                }
                return Ok(words);
            }
            (State::Space | State::Word, Some(c)) if whitespace(c) => {
                if !token.is_empty() || quoted {
                    words.push(std::mem::take(&mut token));
                    quoted = false;
                }
                state = State::Space;
            }
            (State::Space | State::Word, Some('\\')) => state = State::Escape(None),
            (State::Space | State::Word, Some(q @ ('"' | '\''))) => state = State::Quote(q),
            (State::Space | State::Word, Some(c)) => {
                token.push(c);
                state = State::Word;
            }
            (State::Quote(_), None) => return Err(CmdArgsError::Shlex("No closing quotation")),
            (State::Quote(q), Some(c)) => {
                quoted = true;
                if c == q {
                    state = State::Word;
                } else if c == '\\' && q == '"' {
                    state = State::Escape(Some(q));
                } else {
                    token.push(c);
                }
            }
            (State::Escape(_), None) => return Err(CmdArgsError::Shlex("No escaped character")),
            (State::Escape(within), Some(c)) => {
                // Inside double quotes only `"` and `\` are escaped; the backslash stays before
                // anything else.
                if let Some(q) = within {
                    if c != '\\' && c != q {
                        token.push('\\');
                    }
                }
                token.push(c);
                state = match within {
                    Some(q) => State::Quote(q),
                    None => State::Word,
                };
            }
        }
    }
}

fn python_int(tag: &str, value: &str) -> Result<i64, CmdArgsError> {
    let bad = || CmdArgsError::Value {
        tag: tag.into(),
        value: value.into(),
    };
    let text = super::prompt_matrix::python_strip(value);
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return Err(bad());
    }
    text.replace('_', "").parse().map_err(|_| bad())
}

fn python_float(tag: &str, value: &str) -> Result<f64, CmdArgsError> {
    let bad = || CmdArgsError::Value {
        tag: tag.into(),
        value: value.into(),
    };
    let text = super::prompt_matrix::python_strip(value);
    // Python allows single underscores between digits.
    let bytes: Vec<char> = text.chars().collect();
    for (i, &c) in bytes.iter().enumerate() {
        if c == '_' {
            let digit = |j: Option<&char>| j.is_some_and(|c| c.is_ascii_digit());
            if !digit(i.checked_sub(1).and_then(|j| bytes.get(j))) || !digit(bytes.get(i + 1)) {
                return Err(bad());
            }
        }
    }
    let cleaned = text.replace('_', "");
    // Rust also reads "infinity"/"nan" case-insensitively, like Python; it has no hex floats.
    cleaned.parse::<f64>().map_err(|_| bad())
}

/// The tags A1111 v1.10.1 knows that sdhost's request lacks; their values are still converted
/// as A1111 converts them, so a bad value falls back to a prompt as there.
const UNSUPPORTED_STRING: [&str; 4] = [
    "outpath_samples",
    "outpath_grids",
    "prompt_for_display",
    "styles",
];
const UNSUPPORTED_BOOLEAN: [&str; 4] = [
    "restore_faces",
    "tiling",
    "do_not_save_samples",
    "do_not_save_grid",
];

/// A1111's `cmdargs(line)`.
pub fn cmdargs(line: &str) -> Result<LineArgs, CmdArgsError> {
    let args = shlex_split(line)?;
    let mut res = LineArgs::default();
    let mut pos = 0;
    while pos < args.len() {
        let arg = &args[pos];
        let Some(tag) = arg.strip_prefix("--") else {
            return Err(CmdArgsError::NotATag(arg.clone()));
        };
        if pos + 1 >= args.len() {
            return Err(CmdArgsError::MissingValue(arg.clone()));
        }
        if tag == "prompt" || tag == "negative_prompt" {
            pos += 1;
            let mut prompt = args[pos].clone();
            pos += 1;
            while pos < args.len() && !args[pos].starts_with("--") {
                prompt.push(' ');
                prompt.push_str(&args[pos]);
                pos += 1;
            }
            if tag == "prompt" {
                res.prompt = Some(prompt);
            } else {
                res.negative_prompt = Some(prompt);
            }
            continue;
        }
        let value = args[pos + 1].as_str();
        let int = || python_int(tag, value);
        let float = || python_float(tag, value);
        match tag {
            "sd_model" => res.sd_model = Some(value.into()),
            "seed" => res.seed = Some(int()?),
            "subseed" => res.subseed = Some(int()?),
            "subseed_strength" => res.subseed_strength = Some(float()?),
            "seed_resize_from_h" => res.seed_resize_from_h = Some(int()?),
            "seed_resize_from_w" => res.seed_resize_from_w = Some(int()?),
            // Converted, then ignored: v1.10.1's `p.sampler_index` is not used.
            "sampler_index" => {
                int()?;
            }
            "sampler_name" => res.sampler_name = Some(value.into()),
            "batch_size" => res.batch_size = Some(int()?),
            "n_iter" => res.n_iter = Some(int()?),
            "steps" => res.steps = Some(int()?),
            "cfg_scale" => res.cfg_scale = Some(float()?),
            "width" => res.width = Some(int()?),
            "height" => res.height = Some(int()?),
            t if UNSUPPORTED_STRING.contains(&t) || UNSUPPORTED_BOOLEAN.contains(&t) => {
                res.unsupported.push(t.into())
            }
            _ => return Err(CmdArgsError::UnknownTag(arg.clone())),
        }
        pos += 2;
    }
    Ok(res)
}

/// One line as the script reads it: `cmdargs` when it contains `--`, falling back to the whole
/// line as the prompt when that fails; else the line is the prompt.
pub fn parse_line(line: &str) -> Line {
    let prompt_only = || LineArgs {
        prompt: Some(line.to_string()),
        ..Default::default()
    };
    if !line.contains("--") {
        return Line {
            args: prompt_only(),
            fallback: None,
        };
    }
    match cmdargs(line) {
        Ok(args) => Line {
            args,
            fallback: None,
        },
        Err(e) => Line {
            args: prompt_only(),
            fallback: Some(e),
        },
    }
}

impl PromptsFromFileArgs {
    /// Every non-empty line, parsed.
    pub fn parse(&self) -> Vec<Line> {
        lines(&self.text).into_iter().map(parse_line).collect()
    }

    /// Line `number` (1-based)'s request from `base` (whose seed the runner has already set
    /// for this line): A1111's `setattr` of each tag, then the line's prompts put at the start
    /// or end of the request's non-empty ones. `sampler` maps a lower-cased name or alias to
    /// the sampler's name, as A1111's `samplers_map`.
    pub fn line_request(
        &self,
        base: &GenerationRequest,
        args: &LineArgs,
        number: usize,
        sampler: &dyn Fn(&str) -> Option<String>,
    ) -> Result<GenerationRequest, LineError> {
        if let Some(tag) = args.unsupported.first() {
            return Err(LineError::Unsupported {
                line: number,
                tag: tag.clone(),
            });
        }
        let mut r = base.clone();
        let join = |line: &str, request: &str| -> String {
            if line.is_empty() || request.is_empty() {
                return line.to_string();
            }
            match self.prompt_position {
                PromptPosition::Start => format!("{line} {request}"),
                PromptPosition::End => format!("{request} {line}"),
            }
        };
        if let Some(p) = &args.prompt {
            r.prompt = join(p, &base.prompt);
        }
        if let Some(p) = &args.negative_prompt {
            r.negative_prompt = join(p, &base.negative_prompt);
        }
        let range = |tag: &'static str, value: i64| LineError::OutOfRange {
            line: number,
            tag,
            value: value.to_string(),
        };
        let count = |tag: &'static str, v: i64| -> Result<usize, LineError> {
            usize::try_from(v)
                .ok()
                .filter(|&n| n > 0)
                .ok_or(range(tag, v))
        };
        let side = |tag: &'static str, v: i64| -> Result<u32, LineError> {
            u32::try_from(v)
                .ok()
                .filter(|&n| n > 0)
                .ok_or(range(tag, v))
        };
        if let Some(v) = args.seed {
            r.seed = v;
        }
        if let Some(v) = args.subseed {
            r.subseed = v;
        }
        if let Some(v) = args.subseed_strength {
            r.subseed_strength = v;
        }
        if let Some(v) = args.seed_resize_from_h {
            r.seed_resize_from_h = v;
        }
        if let Some(v) = args.seed_resize_from_w {
            r.seed_resize_from_w = v;
        }
        if let Some(name) = &args.sampler_name {
            r.sampler.sampler =
                sampler(&name.to_lowercase()).ok_or_else(|| LineError::UnknownSampler {
                    line: number,
                    name: name.clone(),
                })?;
        }
        if let Some(v) = args.batch_size {
            r.batch_size = count("batch_size", v)?;
        }
        if let Some(v) = args.n_iter {
            r.n_iter = count("n_iter", v)?;
        }
        if let Some(v) = args.steps {
            r.sampler.steps = count("steps", v)?;
        }
        if let Some(v) = args.cfg_scale {
            r.cfg_scale = v;
        }
        if let Some(v) = args.width {
            r.width = side("width", v)?;
        }
        if let Some(v) = args.height {
            r.height = side("height", v)?;
        }
        Ok(r)
    }
}

/// A1111's title.
pub const TITLE: &str = "Prompts from file or textbox";

/// Runs every line's job in order. All lines are read and checked before the first job
/// (unknown samplers, checkpoints or unsupported tags are errors then). Seeds as A1111: with
/// either checkbox a random seed is drawn once; "Iterate seed every line" adds the request's
/// batch size × batch count after each line; a line's `--seed` wins for that line.
pub fn run(
    args: &PromptsFromFileArgs,
    host: &mut dyn ScriptHost,
    base: &ScriptJob,
) -> Result<ScriptOutcome, ScriptError> {
    let mut outcome = ScriptOutcome::default();
    let mut seed = base.params.seed;
    if (args.iterate_seed || args.same_random_seed) && seed == -1 {
        seed = crate::rng::fixed_seed(-1, crate::rng::random_seed) as i64;
    }
    let step = (base.params.batch_size * base.params.n_iter) as i64;
    let sampler = |name: &str| -> Option<String> {
        host.registry()
            .find(name)
            .ok()
            .map(|f| f.info.name.to_string())
    };
    let mut jobs = Vec::new();
    for (i, line) in args.parse().into_iter().enumerate() {
        let number = i + 1;
        let mut parsed = line.args;
        let mut fallback = line.fallback.map(|e| e.to_string());
        // A1111's `process_model_tag` asserts inside `cmdargs`, so an unknown model makes the
        // line a prompt like any other parse error.
        if let Some(model) = parsed.sd_model.clone() {
            if !host.has_checkpoint(&model) {
                fallback = Some(format!("Unknown checkpoint: {model}"));
                parsed = LineArgs {
                    prompt: lines(&args.text).get(i).map(|l| l.to_string()),
                    ..LineArgs::default()
                };
            }
        }
        if let Some(error) = fallback {
            outcome.warnings.push(format!(
                "line {number} is not a command line ({error}); it is used as the prompt"
            ));
        }
        let mut line_base = base.params.clone();
        line_base.seed = seed;
        let params = args
            .line_request(&line_base, &parsed, number, &sampler)
            .map_err(|e| ScriptError::InvalidArgs {
                script: TITLE,
                message: e.to_string(),
            })?;
        jobs.push(ScriptJob {
            params,
            init: base.init.clone(),
            checkpoint: parsed.sd_model.clone().or_else(|| base.checkpoint.clone()),
            cell: Vec::new(),
        });
        if args.iterate_seed {
            seed += step;
        }
    }
    plan_jobs(host, &jobs);
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
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shlex_splits_like_python() {
        assert_eq!(
            shlex_split(r#"--prompt "a \"b\" \c" 'd e'f "" x\ y"#).unwrap(),
            ["--prompt", r#"a "b" \c"#, "d ef", "", "x y"]
        );
        assert!(shlex_split("\"open").is_err());
        assert!(shlex_split("end\\").is_err());
    }

    #[test]
    fn lines_with_flags_are_command_lines_and_bad_ones_prompts() {
        let line = parse_line("--prompt a red cat --steps 12 --cfg_scale 7.5");
        assert_eq!(line.args.prompt.as_deref(), Some("a red cat"));
        assert_eq!(
            (line.args.steps, line.args.cfg_scale),
            (Some(12), Some(7.5))
        );
        let bad = parse_line("--steps twelve");
        assert_eq!(bad.args.prompt.as_deref(), Some("--steps twelve"));
        assert!(bad.fallback.is_some());
        assert_eq!(lines(" a \r\n\n b\x0cc\u{2028}"), ["a", "b", "c"]);
    }
}
