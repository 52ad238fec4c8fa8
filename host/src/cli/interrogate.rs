//! `sdhost interrogate IMAGE --method clip|deepbooru`: the prompt A1111's "Interrogate CLIP" or
//! "Interrogate DeepBooru" button writes for a picture, with A1111's options as flags.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::device::parse_device;
use crate::interrogate::{InterrogateFiles, InterrogateMethod, InterrogateOptions, Interrogator};

/// The two methods, as flag values.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum MethodFlag {
    /// BLIP caption + CLIP ranking over the category lists.
    Clip,
    /// DeepDanbooru tags.
    #[value(alias = "deepdanbooru")]
    Deepbooru,
}

/// Arguments of `sdhost interrogate`.
#[derive(Args)]
pub struct InterrogateArgs {
    /// The picture (any format the image crate reads; alpha is dropped as A1111's
    /// `convert("RGB")` does, without compositing).
    image: PathBuf,
    /// Which button: clip or deepbooru.
    #[arg(long, value_enum, default_value = "clip")]
    method: MethodFlag,
    /// Print `{"caption": …, "method": …}` as JSON.
    #[arg(long)]
    json: bool,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Do not cache CLIP's text features of the category lists (A1111 recomputes them on
    /// every call; the result is the same).
    #[arg(long)]
    no_feature_cache: bool,
    /// An A1111 models/ folder: BLIP/, clip/, torch_deepdanbooru/ (or DeepDanbooru/), and
    /// interrogate/ inside or beside it.
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,
    #[command(flatten)]
    files: InterrogateFiles,
    #[command(flatten)]
    options: OptionFlags,
}

/// A1111's Settings → Interrogate, as flags; each left out keeps A1111's default
/// ([`InterrogateOptions::default`]).
#[derive(Args)]
struct OptionFlags {
    /// Include ranks of model tags matches in results (`interrogate_return_ranks`).
    #[arg(long)]
    return_ranks: bool,
    /// BLIP: num_beams (`interrogate_clip_num_beams`, 1-16) [default: 1, greedy].
    #[arg(long)]
    num_beams: Option<u32>,
    /// BLIP: minimum description length in tokens (`interrogate_clip_min_length`) [default: 24].
    #[arg(long)]
    min_length: Option<u32>,
    /// BLIP: maximum description length in tokens (`interrogate_clip_max_length`) [default: 48].
    #[arg(long)]
    max_length: Option<u32>,
    /// CLIP: lines of each category file used, 0 = all (`interrogate_clip_dict_limit`) [default: 1500].
    #[arg(long)]
    dict_limit: Option<u32>,
    /// CLIP: skip a category (file stem, e.g. artists); repeat for several
    /// (`interrogate_clip_skip_categories`).
    #[arg(long = "skip-category", value_name = "NAME")]
    skip_categories: Vec<String>,
    /// DeepBooru: score threshold (`interrogate_deepbooru_score_threshold`) [default: 0.5].
    #[arg(long)]
    threshold: Option<f64>,
    /// DeepBooru: sort by score instead of alphabetically (`deepbooru_sort_alpha` off).
    #[arg(long)]
    sort_by_score: bool,
    /// DeepBooru: keep underscores (`deepbooru_use_spaces` off).
    #[arg(long)]
    no_spaces: bool,
    /// DeepBooru: do not escape brackets (`deepbooru_escape` off).
    #[arg(long)]
    no_escape: bool,
    /// DeepBooru: comma-separated tags to leave out (`deepbooru_filter_tags`).
    #[arg(long)]
    filter_tags: Option<String>,
}

impl OptionFlags {
    fn options(&self) -> InterrogateOptions {
        let defaults = InterrogateOptions::default();
        InterrogateOptions {
            interrogate_return_ranks: self.return_ranks,
            interrogate_clip_num_beams: self
                .num_beams
                .unwrap_or(defaults.interrogate_clip_num_beams),
            interrogate_clip_min_length: self
                .min_length
                .unwrap_or(defaults.interrogate_clip_min_length),
            interrogate_clip_max_length: self
                .max_length
                .unwrap_or(defaults.interrogate_clip_max_length),
            interrogate_clip_dict_limit: self
                .dict_limit
                .unwrap_or(defaults.interrogate_clip_dict_limit),
            interrogate_clip_skip_categories: self.skip_categories.clone(),
            interrogate_deepbooru_score_threshold: self
                .threshold
                .unwrap_or(defaults.interrogate_deepbooru_score_threshold),
            deepbooru_sort_alpha: !self.sort_by_score,
            deepbooru_use_spaces: !self.no_spaces,
            deepbooru_escape: !self.no_escape,
            deepbooru_filter_tags: self.filter_tags.clone().unwrap_or_default(),
            ..defaults
        }
    }
}

/// Prints the interrogation of the picture.
pub fn run(args: &InterrogateArgs) -> anyhow::Result<()> {
    let method = match args.method {
        MethodFlag::Clip => InterrogateMethod::Clip,
        MethodFlag::Deepbooru => InterrogateMethod::Deepbooru,
    };
    let options = args.options.options();
    let device = parse_device(&args.device)?;
    let cache = if args.no_feature_cache {
        None
    } else {
        Interrogator::default_feature_cache_dir()
    };
    let files = InterrogateFiles {
        models_dir: args.models_dir.clone(),
        ..args.files.clone()
    };
    let mut interrogator = Interrogator::new(files, device, cache);
    // Files and options first: a missing model is reported before the picture is read.
    interrogator.check(method, &options)?;
    let image = image::open(&args.image)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.image.display()))?
        .to_rgb8();
    let caption = interrogator.interrogate(&image, method, &options)?;
    if args.json {
        let value = serde_json::json!({"caption": caption, "method": method.api_name()});
        println!("{}", serde_json::to_string(&value)?);
    } else {
        println!("{caption}");
    }
    Ok(())
}
