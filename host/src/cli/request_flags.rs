//! The generation request as command-line flags: one `--kebab-name` per field of
//! [`GenerationRequest::fields`], with the field's doc as its help, so a new request field is a
//! new flag without code here. Plus A1111's `--mask-blur` (both directions) and repeatable
//! `--option NAME=VALUE` for sampler options.

use std::sync::OnceLock;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use serde_json::{Map, Value};

use crate::request::GenerationRequest;

/// Older flag names kept working: (flag, field).
const FLAG_ALIASES: &[(&str, &str)] = &[
    ("sampler", "sampler_name"),
    ("batch-count", "n_iter"),
    ("rng", "randn_source"),
    ("color-correction", "img2img_color_correction"),
    ("vae", "sd_vae"),
    ("refiner", "refiner_checkpoint"),
];

/// One field as a flag.
struct Flag {
    field: &'static str,
    long: String,
    help: String,
    /// Booleans: given alone, the flag means true.
    switch: bool,
    /// Text fields take the value as it is (a prompt "1" stays text).
    text: bool,
    /// Numbers may be negative (`--seed -1`).
    number: bool,
    /// The value's name in help (`STEPS`).
    value_name: String,
}

fn flags() -> &'static [Flag] {
    static FLAGS: OnceLock<Vec<Flag>> = OnceLock::new();
    FLAGS.get_or_init(|| {
        GenerationRequest::fields()
            .iter()
            .map(|field| {
                let default = match &field.default {
                    Value::String(s) if s.is_empty() => String::new(),
                    Value::String(s) => format!(" [default: {s}]"),
                    Value::Null => String::new(),
                    Value::Object(map) if map.is_empty() => String::new(),
                    other => format!(" [default: {other}]"),
                };
                Flag {
                    field: field.name.as_str(),
                    long: field.name.replace('_', "-"),
                    help: format!("{}{default}", field.description),
                    switch: field.default.is_boolean(),
                    text: field.default.is_string(),
                    number: field.default.is_number(),
                    value_name: field.name.to_ascii_uppercase(),
                }
            })
            .collect()
    })
}

/// The request fields given on the command line, as a JSON object for
/// [`GenerationRequest::overlay`], and the sampler options.
#[derive(Debug, Clone, Default)]
pub struct RequestFlags {
    /// The fields given (A1111 API names), `mask_blur` included.
    pub changes: Map<String, Value>,
    /// `--option NAME=VALUE`, in order.
    pub options: Vec<String>,
}

/// A flag's text as a JSON value: text fields as given; else JSON when it parses
/// (numbers, booleans), `WxH` as `[w, h]`, and names as text.
fn flag_value(flag: &Flag, raw: &str) -> Value {
    if flag.text {
        return Value::String(raw.to_string());
    }
    if let Ok(value) = serde_json::from_str::<Value>(raw) {
        return value;
    }
    if let Some((w, h)) = raw.split_once(['x', 'X']) {
        if let (Ok(w), Ok(h)) = (w.trim().parse::<u32>(), h.trim().parse::<u32>()) {
            return serde_json::json!([w, h]);
        }
    }
    Value::String(raw.to_string())
}

impl FromArgMatches for RequestFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = RequestFlags::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for flag in flags() {
            if let Some(raw) = matches.get_one::<String>(flag.field) {
                self.changes
                    .insert(flag.field.to_string(), flag_value(flag, raw));
            }
        }
        if let Some(blur) = matches.get_one::<String>("mask_blur") {
            let value = serde_json::from_str(blur).unwrap_or(Value::String(blur.clone()));
            self.changes.insert("mask_blur".into(), value);
        }
        if let Some(options) = matches.get_many::<String>("sampler_option") {
            self.options.extend(options.cloned());
        }
        Ok(())
    }
}

impl Args for RequestFlags {
    fn augment_args(mut cmd: Command) -> Command {
        for flag in flags() {
            let mut arg = Arg::new(flag.field)
                .long(flag.long.as_str())
                .help(flag.help.as_str())
                .value_name(if flag.switch {
                    "BOOL"
                } else {
                    flag.value_name.as_str()
                })
                .action(ArgAction::Set)
                // Negative numbers (seed -1); never for switches, which would eat the next flag.
                .allow_hyphen_values(flag.number)
                .help_heading("Generation (A1111's API fields)");
            for (alias, field) in FLAG_ALIASES {
                if *field == flag.field {
                    arg = arg.visible_alias(*alias);
                }
            }
            if flag.switch {
                arg = arg.num_args(0..=1).default_missing_value("true");
            }
            cmd = cmd.arg(arg);
        }
        cmd.arg(
            Arg::new("mask_blur")
                .long("mask-blur")
                .help("Mask blur in pixels along x and y (sets both)")
                .action(ArgAction::Set)
                .help_heading("Generation (A1111's API fields)"),
        )
        .arg(
            Arg::new("sampler_option")
                .long("option")
                .value_name("NAME=VALUE")
                .help("Sampler option, repeatable: eta=0.5, s_churn=1 (`sdhost samplers --options` lists them)")
                .action(ArgAction::Append)
                .help_heading("Generation (A1111's API fields)"),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}
