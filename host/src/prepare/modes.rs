//! A1111's img2img tabs (`modules/img2img.py: img2img`, the tabs of `modules/ui.py`) as inputs
//! to one job: which image is the init image and where the mask comes from in img2img, Sketch,
//! Inpaint, Inpaint sketch and Inpaint upload.

use image::{DynamicImage, GrayImage, RgbImage, RgbaImage};

use super::init_image::flatten;
use super::mask::binary_mask;
use super::pillow::{alpha_composite, blend, gaussian_blur};
use super::resample::{resize, Filter};

/// The tab of A1111's img2img page a job comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Img2ImgMode {
    /// The image alone.
    Img2img,
    /// The image with a sketch painted over it; no mask.
    Sketch,
    /// The image and a mask drawn on it (same size).
    Inpaint,
    /// The image and coloured strokes: the strokes are the mask and the new content.
    InpaintSketch,
    /// The image and a mask made elsewhere (a size with the image's aspect ratio is scaled).
    InpaintUpload,
}

/// Why the inputs of a mode do not fit together.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModeError {
    /// A mode needs an input that was not given.
    #[error("{mode} needs {what}")]
    Missing {
        mode: &'static str,
        what: &'static str,
    },
    /// A layer does not match the image's size.
    #[error("the {what} is {w}x{h} but the image is {image_w}x{image_h}{hint}")]
    SizeMismatch {
        what: &'static str,
        w: u32,
        h: u32,
        image_w: u32,
        image_h: u32,
        hint: &'static str,
    },
    /// Mask transparency out of range.
    #[error("mask transparency must be between 0 and 100, got {0}")]
    MaskAlpha(f64),
}

/// The images of a job as they arrive (before flattening), and the mode's options.
pub struct ModeInputs<'a> {
    /// The image (the editor layer).
    pub image: &'a DynamicImage,
    /// A sketch layer (RGBA strokes over transparency, or an opaque painted copy).
    pub sketch: Option<&'a DynamicImage>,
    /// A mask image (white or opaque = regenerate).
    pub mask: Option<&'a DynamicImage>,
    /// Inpaint sketch's "Mask transparency", 0–100.
    pub mask_alpha: f64,
    /// The mask blur σ (Inpaint sketch blurs its strokes with it before compositing).
    pub mask_blur: u32,
    /// Background colour for transparency.
    pub background: [u8; 3],
}

impl Img2ImgMode {
    /// A1111's tab name.
    pub fn label(self) -> &'static str {
        match self {
            Img2ImgMode::Img2img => "img2img",
            Img2ImgMode::Sketch => "Sketch",
            Img2ImgMode::Inpaint => "Inpaint",
            Img2ImgMode::InpaintSketch => "Inpaint sketch",
            Img2ImgMode::InpaintUpload => "Inpaint upload",
        }
    }

    /// Every mode, in A1111's tab order.
    pub const ALL: [Img2ImgMode; 5] = [
        Img2ImgMode::Img2img,
        Img2ImgMode::Sketch,
        Img2ImgMode::Inpaint,
        Img2ImgMode::InpaintSketch,
        Img2ImgMode::InpaintUpload,
    ];

    /// The mode's name on the wire and the command line (`inpaint-sketch`).
    pub fn name(self) -> &'static str {
        match self {
            Img2ImgMode::Img2img => "img2img",
            Img2ImgMode::Sketch => "sketch",
            Img2ImgMode::Inpaint => "inpaint",
            Img2ImgMode::InpaintSketch => "inpaint-sketch",
            Img2ImgMode::InpaintUpload => "inpaint-upload",
        }
    }

    /// The mode named `text` (any case; `_` for `-` too).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase().replace('_', "-");
        Self::ALL.into_iter().find(|m| m.name() == text)
    }

    /// The mode the inputs imply when none is named: a mask → Inpaint upload, a sketch →
    /// Sketch, else img2img.
    pub fn implied(sketch: bool, mask: bool) -> Self {
        match (sketch, mask) {
            (_, true) => Img2ImgMode::InpaintUpload,
            (true, false) => Img2ImgMode::Sketch,
            (false, false) => Img2ImgMode::Img2img,
        }
    }

    /// The init image (RGB) and mask (255 = regenerate) of a job in this mode.
    pub fn prepare<'i>(
        self,
        inputs: &ModeInputs<'i>,
    ) -> Result<(RgbImage, Option<GrayImage>), ModeError> {
        let image = flatten(inputs.image, inputs.background);
        let (w, h) = image.dimensions();
        let need = |input: Option<&'i DynamicImage>, what: &'static str| {
            input.ok_or(ModeError::Missing {
                mode: self.label(),
                what,
            })
        };
        match self {
            Img2ImgMode::Img2img => Ok((image, None)),
            Img2ImgMode::Sketch => {
                let sketch = need(inputs.sketch, "a sketch layer")?;
                check_size("sketch", sketch, w, h, SKETCH_HINT)?;
                Ok((painted(&image, sketch), None))
            }
            Img2ImgMode::Inpaint => {
                let mask = need(inputs.mask, "a mask")?;
                check_size("mask", mask, w, h, "; give a mask of the image's size, or use Inpaint upload, which scales a mask of the same aspect ratio")?;
                Ok((image, Some(binary_mask(mask, true))))
            }
            Img2ImgMode::InpaintUpload => {
                let mask = need(inputs.mask, "a mask")?;
                let mask = binary_mask(mask, true);
                Ok((image, Some(fit_uploaded_mask(mask, w, h)?)))
            }
            Img2ImgMode::InpaintSketch => {
                let sketch = need(inputs.sketch, "a sketch layer")?;
                check_size("sketch", sketch, w, h, SKETCH_HINT)?;
                if !(0.0..=100.0).contains(&inputs.mask_alpha) {
                    return Err(ModeError::MaskAlpha(inputs.mask_alpha));
                }
                Ok(inpaint_sketch(
                    &image,
                    &painted(&image, sketch),
                    inputs.mask_alpha,
                    inputs.mask_blur,
                ))
            }
        }
    }
}

/// What to do about a sketch layer of the wrong size.
const SKETCH_HINT: &str = "; the sketch layer must cover the image exactly";

fn check_size(
    what: &'static str,
    layer: &DynamicImage,
    image_w: u32,
    image_h: u32,
    hint: &'static str,
) -> Result<(), ModeError> {
    if layer.width() == image_w && layer.height() == image_h {
        Ok(())
    } else {
        Err(ModeError::SizeMismatch {
            what,
            w: layer.width(),
            h: layer.height(),
            image_w,
            image_h,
            hint,
        })
    }
}

/// The image with the sketch painted over it (strokes with transparency are composited; an
/// opaque sketch replaces the image, as A1111's colour-sketch canvas returns it).
fn painted(image: &RgbImage, sketch: &DynamicImage) -> RgbImage {
    let mut base = DynamicImage::ImageRgb8(image.clone()).to_rgba8();
    alpha_composite(&mut base, &sketch.to_rgba8());
    DynamicImage::ImageRgba8(base).to_rgb8()
}

/// An uploaded mask at the image's size: as it is when sizes agree, scaled (Lanczos) when it
/// has the image's aspect ratio within a pixel, refused otherwise.
fn fit_uploaded_mask(mask: GrayImage, w: u32, h: u32) -> Result<GrayImage, ModeError> {
    let (mw, mh) = mask.dimensions();
    if (mw, mh) == (w, h) {
        return Ok(mask);
    }
    // Same aspect ratio: the mask's height at the image's width differs by at most a pixel.
    let scaled_h = f64::from(mh) * f64::from(w) / f64::from(mw);
    if (scaled_h - f64::from(h)).abs() > 1.0 {
        return Err(ModeError::SizeMismatch {
            what: "mask",
            w: mw,
            h: mh,
            image_w: w,
            image_h: h,
            hint: " and has another aspect ratio; give a mask of the image's size or aspect ratio",
        });
    }
    let rgb = DynamicImage::ImageLuma8(mask).to_rgb8();
    let scaled = resize(&rgb, w, h, Filter::Lanczos, None);
    Ok(GrayImage::from_fn(w, h, |x, y| {
        image::Luma([scaled.get_pixel(x, y)[0]])
    }))
}

/// Inpaint sketch (A1111 `img2img` mode 3): the mask is where the painted image differs from
/// the original, dimmed by the mask transparency; the init image is the original with the
/// blurred strokes blended in by the blurred mask.
fn inpaint_sketch(
    original: &RgbImage,
    painted: &RgbImage,
    mask_alpha: f64,
    mask_blur: u32,
) -> (RgbImage, Option<GrayImage>) {
    let (w, h) = original.dimensions();
    // ImageEnhance.Brightness: a blend with black, truncated to 8 bits in float32.
    let factor = (1.0 - mask_alpha / 100.0) as f32;
    let on = (factor * 255.0).clamp(0.0, 255.0) as u8;
    let mask = GrayImage::from_fn(w, h, |x, y| {
        let changed = original.get_pixel(x, y) != painted.get_pixel(x, y);
        image::Luma([if changed { on } else { 0 }])
    });
    let radius = mask_blur as f32;
    let as_rgba = |img: &RgbImage| DynamicImage::ImageRgb8(img.clone()).to_rgba8();
    let blurred_paint = gaussian_blur(&as_rgba(painted), radius);
    let mask_rgba = RgbaImage::from_fn(w, h, |x, y| {
        let v = mask.get_pixel(x, y)[0];
        image::Rgba([v, v, v, v])
    });
    let blurred_mask = gaussian_blur(&mask_rgba, radius);
    let init = RgbImage::from_fn(w, h, |x, y| {
        let m = blurred_mask.get_pixel(x, y)[0];
        let o = original.get_pixel(x, y);
        let p = blurred_paint.get_pixel(x, y);
        image::Rgb([
            blend(m, o[0], p[0]),
            blend(m, o[1], p[1]),
            blend(m, o[2], p[2]),
        ])
    });
    (init, Some(mask))
}
