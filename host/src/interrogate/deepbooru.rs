//! Interrogate DeepBooru: DeepDanbooru's tags for a picture, formatted as A1111 writes them
//! into the prompt (`modules/deepbooru.py: DeepDanbooru.tag`, `tag_multi`).
//!
//! The model file is A1111's `models/torch_deepdanbooru/model-resnet_custom_v3.pt`: a
//! `torch.save` of an `OrderedDict` with `n_Conv_<i>.weight`/`.bias` and `tags` (a list of str,
//! one per output channel), read with the restricted unpickler; the network is
//! [`crate::models::deepdanbooru`].
//!
//! Precision: A1111 keeps the model in `devices.dtype` and runs it under autocast on the SD
//! device, so on CUDA the convolutions and the probabilities are fp16; on the CPU everything
//! is fp32. [`compute_kind`] makes the same choice (fp16 on CUDA, fp32 on the CPU);
//! [`DeepDanbooru::load_as`] takes another (A1111's `--no-half` is fp32 on CUDA).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use image::RgbImage;
use tch::{Device, Kind, Tensor};

use super::InterrogateOptions;
use crate::models::deepdanbooru::{
    DeepDanbooruConfig, DeepDanbooruNet, InputSizeError, LayoutError,
};
use crate::pickle::{PickleError, TensorRef, TorchFile, Value};
use crate::prepare::resize::{resize_image, ResizeMode};
use crate::weights::{LoadError, TensorMap, VarBuilder};

/// The side of the square A1111 resizes every picture to before tagging.
pub const INPUT_SIZE: u32 = 512;

/// What can go wrong loading DeepDanbooru or tagging with it.
#[derive(Debug, thiserror::Error)]
pub enum DeepbooruError {
    /// The file is not a readable, safe PyTorch pickle (malformed, truncated, a refused global…).
    #[error(transparent)]
    Pickle(#[from] PickleError),
    /// The pickle holds something other than DeepDanbooru's state dict.
    #[error("{path}: not a DeepDanbooru model: {reason}")]
    NotDeepDanbooru { path: PathBuf, reason: String },
    /// The state dict's keys or kernel sizes are not DeepDanbooru's.
    #[error("{path}: not DeepDanbooru's resnet custom v3 layout: {source}")]
    Layout {
        path: PathBuf,
        #[source]
        source: LayoutError,
    },
    /// The `tags` list does not name every output channel of the head.
    #[error("{path}: {tags} tags for the head's {channels} output channels (`n_Conv_178`)")]
    TagCount {
        path: PathBuf,
        tags: usize,
        channels: i64,
    },
    /// A tensor has a shape that does not chain with its neighbours, or libtorch refused it.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The picture's size is not one the network takes.
    #[error(transparent)]
    InputSize(#[from] InputSizeError),
    /// The picture has no pixels.
    #[error("the picture to interrogate is empty ({width}×{height})")]
    EmptyPicture { width: u32, height: u32 },
}

/// The dtype DeepDanbooru runs in on `device`: fp16 on CUDA (A1111's default `devices.dtype`
/// under autocast), fp32 on the CPU.
pub fn compute_kind(device: Device) -> Kind {
    if device.is_cuda() {
        Kind::Half
    } else {
        Kind::Float
    }
}

/// A loaded DeepDanbooru: the network and its tag names.
pub struct DeepDanbooru {
    net: DeepDanbooruNet,
    tags: Vec<String>,
}

impl DeepDanbooru {
    /// Loads `path` onto `device` in [`compute_kind`]'s dtype.
    pub fn load(path: &Path, device: Device) -> Result<Self, DeepbooruError> {
        Self::load_as(path, device, compute_kind(device))
    }

    /// Loads `path` onto `device` in `kind`, checking the whole layout and the tag count before
    /// any weight is read.
    pub fn load_as(path: &Path, device: Device, kind: Kind) -> Result<Self, DeepbooruError> {
        let file = TorchFile::open(path)?;
        let contents = read_contents(&file)?;
        let shapes = contents
            .tensors
            .iter()
            .map(|(key, t)| (key.clone(), t.shape().to_vec()))
            .collect();
        let config =
            DeepDanbooruConfig::from_shapes(&shapes).map_err(|source| DeepbooruError::Layout {
                path: path.to_path_buf(),
                source,
            })?;
        if contents.tags.len() as i64 != config.tags {
            return Err(DeepbooruError::TagCount {
                path: path.to_path_buf(),
                tags: contents.tags.len(),
                channels: config.tags,
            });
        }
        let mut tensors = BTreeMap::new();
        for (key, t) in &contents.tensors {
            tensors.insert(key.clone(), file.tensor(t)?);
            // The copy is made: drop the file's pages so the load does not hold both.
            file.release(t);
        }
        let map = TensorMap::new(path, tensors);
        let net = DeepDanbooruNet::new(&VarBuilder::new(&map, kind, device), &config)?;
        Ok(Self {
            net,
            tags: contents.tags,
        })
    }

    /// The tag of each output channel, in the file's order.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The network.
    pub fn net(&self) -> &DeepDanbooruNet {
        &self.net
    }

    /// Each tag's probability for `picture` as it is (no resizing; sides must be multiples of
    /// 128): `float32(pixels) / 255` as NHWC through the network, as fp32 values of the
    /// network's dtype.
    pub fn probabilities(&self, picture: &RgbImage) -> Result<Vec<f32>, DeepbooruError> {
        let probabilities = tch::no_grad(|| self.net.forward(&picture_tensor(picture)))?;
        Ok(Vec::<f32>::try_from(
            probabilities
                .get(0)
                .to_device(Device::Cpu)
                .to_kind(Kind::Float),
        )
        .map_err(LoadError::from)?)
    }

    /// A1111's Interrogate DeepBooru: the picture resized and filled to 512², tagged, and the
    /// tags formatted by [`format_tags`] under `options`.
    pub fn tag(
        &self,
        image: &RgbImage,
        options: &InterrogateOptions,
    ) -> Result<String, DeepbooruError> {
        let (width, height) = image.dimensions();
        if width == 0 || height == 0 {
            return Err(DeepbooruError::EmptyPicture { width, height });
        }
        let probabilities = self.probabilities(&preprocess(image))?;
        Ok(format_tags(&self.tags, &probabilities, options))
    }
}

/// The state dict's tensors and the tag list, before any data is read.
struct Contents {
    tensors: BTreeMap<String, TensorRef>,
    tags: Vec<String>,
}

/// Splits the unpickled root into tensors and `tags`, refusing anything else.
fn read_contents(file: &TorchFile) -> Result<Contents, DeepbooruError> {
    let not_deepdanbooru = |reason: String| DeepbooruError::NotDeepDanbooru {
        path: file.path().to_path_buf(),
        reason,
    };
    let Value::Dict(items) = &file.root else {
        return Err(not_deepdanbooru(format!(
            "the file holds a {}, not a state dict",
            file.root.type_name()
        )));
    };
    let items = items.borrow();
    let is_conv = |key: &Value| matches!(key, Value::Str(k) if k.starts_with("n_Conv_"));
    if !items.iter().any(|(key, _)| is_conv(key)) {
        return Err(not_deepdanbooru(
            "it has no `n_Conv_<i>` convolutions".to_string(),
        ));
    }
    let mut tensors = BTreeMap::new();
    // A1111: `state_dict.get('tags', [])`; a file without tags is refused later, by count.
    let mut tags = Vec::new();
    for (key, value) in items.iter() {
        let Value::Str(key) = key else {
            return Err(not_deepdanbooru(format!(
                "a key is of type {}, not str",
                key.type_name()
            )));
        };
        match (key.as_str(), value) {
            ("tags", Value::List(list)) => tags = tag_names(&list.borrow(), &not_deepdanbooru)?,
            ("tags", Value::Tuple(list)) => tags = tag_names(list, &not_deepdanbooru)?,
            ("tags", other) => {
                return Err(not_deepdanbooru(format!(
                    "`tags` is of type {}, not a list of str",
                    other.type_name()
                )))
            }
            (_, Value::Tensor(t)) => {
                tensors.insert(key.clone(), t.clone());
            }
            (_, other) => {
                return Err(not_deepdanbooru(format!(
                    "`{key}` is of type {}, not a tensor",
                    other.type_name()
                )))
            }
        }
    }
    Ok(Contents { tensors, tags })
}

fn tag_names(
    list: &[Value],
    not_deepdanbooru: &dyn Fn(String) -> DeepbooruError,
) -> Result<Vec<String>, DeepbooruError> {
    list.iter()
        .enumerate()
        .map(|(i, tag)| match tag {
            Value::Str(tag) => Ok(tag.clone()),
            other => Err(not_deepdanbooru(format!(
                "tags[{i}] is of type {}, not str",
                other.type_name()
            ))),
        })
        .collect()
}

/// A1111's preprocessing: `resize_image` mode 2 ("Resize and fill") to 512×512.
pub fn preprocess(image: &RgbImage) -> RgbImage {
    resize_image(ResizeMode::ResizeAndFill, image, INPUT_SIZE, INPUT_SIZE)
}

/// `np.expand_dims(np.array(pic, dtype=np.float32), 0) / 255`: [1, H, W, 3] fp32 on the CPU.
pub fn picture_tensor(picture: &RgbImage) -> Tensor {
    let (w, h) = picture.dimensions();
    Tensor::from_slice(picture.as_raw())
        .reshape([1, i64::from(h), i64::from(w), 3])
        .to_kind(Kind::Float)
        / 255.0
}

/// `tag_multi`'s formatting (spec §5.3 steps 4-8): tags scoring at least the threshold and not
/// `rating:*`, sorted by code point (or by descending probability, ties in model order),
/// without the filtered ones (compared in their underscore form), `_` written as a space,
/// `\ ( )` escaped, optionally `(tag:0.123)`, joined with `", "`.
pub fn format_tags(tags: &[String], probabilities: &[f32], options: &InterrogateOptions) -> String {
    // A Python dict: a repeated tag keeps its first place and its last probability.
    let mut kept: Vec<(&str, f32)> = Vec::new();
    let mut place: HashMap<&str, usize> = HashMap::new();
    for (tag, &p) in tags.iter().zip(probabilities) {
        // numpy compares the float32 score with the Python float in double precision.
        if f64::from(p) < options.interrogate_deepbooru_score_threshold
            || tag.starts_with("rating:")
        {
            continue;
        }
        match place.get(tag.as_str()) {
            Some(&i) => kept[i].1 = p,
            None => {
                place.insert(tag, kept.len());
                kept.push((tag, p));
            }
        }
    }
    if options.deepbooru_sort_alpha {
        // Rust orders strings by UTF-8 bytes, which is Python's code-point order.
        kept.sort_by(|a, b| a.0.cmp(b.0));
    } else {
        // Stable, as Python's `sorted(key=lambda x: -x[1])`.
        kept.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    }
    let filtered: Vec<String> = options
        .deepbooru_filter_tags
        .split(',')
        .map(|s| s.trim().replace(' ', "_"))
        .collect();
    kept.iter()
        .filter(|(tag, _)| !filtered.iter().any(|f| f == tag))
        .map(|&(tag, p)| {
            let mut text = if options.deepbooru_use_spaces {
                tag.replace('_', " ")
            } else {
                tag.to_string()
            };
            if options.deepbooru_escape {
                text = escape(&text);
            }
            if options.interrogate_return_ranks {
                // Rust's `{:.3}` rounds the exact binary value like Python's `%.3f`.
                text = format!("({text}:{:.3})", f64::from(p));
            }
            text
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A backslash before each `\`, `(` and `)`, so the prompt parser reads them literally.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '(' | ')') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn threshold_ratings_sorting_and_formatting() {
        let names = tags(&["b_tag", "rating:safe", "A(x)", "é", "low", "back\\slash"]);
        let p = [0.7, 0.99, 0.5, 0.6, 0.49999, 0.8];
        let default = InterrogateOptions::default();
        assert_eq!(
            format_tags(&names, &p, &default),
            "A\\(x\\), b tag, back\\\\slash, é"
        );
        let by_score = InterrogateOptions {
            deepbooru_sort_alpha: false,
            deepbooru_escape: false,
            deepbooru_use_spaces: false,
            interrogate_return_ranks: true,
            ..default.clone()
        };
        assert_eq!(
            format_tags(&names, &p, &by_score),
            "(back\\slash:0.800), (b_tag:0.700), (é:0.600), (A(x):0.500)"
        );
        let filtered = InterrogateOptions {
            deepbooru_filter_tags: " b tag , é,".into(),
            ..default
        };
        assert_eq!(
            format_tags(&names, &p, &filtered),
            "A\\(x\\), back\\\\slash"
        );
    }

    #[test]
    fn ties_keep_model_order_and_repeats_act_as_a_dict() {
        let names = tags(&["z", "a", "m", "a"]);
        let p = [0.75, 0.6, 0.75, 0.9];
        let by_score = InterrogateOptions {
            deepbooru_sort_alpha: false,
            interrogate_return_ranks: true,
            ..InterrogateOptions::default()
        };
        assert_eq!(
            format_tags(&names, &p, &by_score),
            "(a:0.900), (z:0.750), (m:0.750)"
        );
    }

    #[test]
    fn ranks_round_like_python() {
        let names = tags(&["a", "b", "c"]);
        // Exact binary ties round to even in both Python's `%.3f` and Rust's `{:.3}`.
        let p = [0.5625f32, 0.6875, 0.9375];
        let ranks = InterrogateOptions {
            interrogate_return_ranks: true,
            ..InterrogateOptions::default()
        };
        assert_eq!(
            format_tags(&names, &p, &ranks),
            "(a:0.562), (b:0.688), (c:0.938)"
        );
    }

    #[test]
    fn pictures_become_nhwc_fractions() {
        let picture = RgbImage::from_fn(2, 1, |x, _| image::Rgb([255 * x as u8, 51, 0]));
        let t = picture_tensor(&picture);
        assert_eq!(t.size(), [1, 1, 2, 3]);
        let values = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        assert_eq!(values, [0.0, 0.2, 0.0, 1.0, 0.2, 0.0]);
    }
}
