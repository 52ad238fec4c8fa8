//! `sdhost png-info`: the generation parameters stored in a PNG, as A1111's PNG Info shows them.

use std::path::PathBuf;

use clap::Args;

use crate::infotext::Infotext;
use crate::pipeline::png_info::read_png_infotext;

/// Arguments of `sdhost png-info`.
#[derive(Args)]
pub struct PngInfoArgs {
    /// The PNG file.
    file: PathBuf,
    /// Print the parsed prompt, negative prompt and parameters as JSON.
    #[arg(long)]
    json: bool,
}

/// Prints the infotext, or its parsed form.
pub fn run(args: &PngInfoArgs) -> anyhow::Result<()> {
    let Some(text) = read_png_infotext(&args.file)? else {
        anyhow::bail!("{}: has no generation parameters", args.file.display());
    };
    if args.json {
        let info = Infotext::parse(&text);
        let params: serde_json::Map<String, serde_json::Value> = info
            .params
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let value = serde_json::json!({
            "prompt": info.prompt,
            "negative_prompt": info.negative_prompt,
            "parameters": params,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{text}");
    }
    Ok(())
}
