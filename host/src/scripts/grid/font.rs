//! Text measuring and drawing for grid legends, laid out as Pillow does it with FreeType and
//! libraqm (`ImageFont.truetype`, `ImageDraw.text`, `ImageDraw.textbbox`), the calls
//! `modules/images.py: draw_grid_annotations` makes.
//!
//! Shaping is HarfBuzz's (rustybuzz), so kerning and ligatures are Pillow's; positions are kept
//! in FreeType's 26.6 fixed point and rounded where Pillow rounds them (`_imagingft.c:
//! bounding_box_and_anchors`, `font_render`), because the legend's geometry (the strip above
//! the grid, where each line lands) follows from those integers.
//!
//! Pillow loads glyphs hinted, and Roboto has no hinting instructions, so FreeType's
//! autohinter decides each glyph's top and bottom: it stretches the vertical scale so the
//! x-height lands on a whole pixel and snaps edges near the blue zones (cap height, x-height,
//! ascender, baseline, descender) to them. Line heights, and with them the height of every
//! legend, come from those hinted extents, so [`hinting`] models that vertical part
//! (`autofit/aflatin.c: af_latin_metrics_init_blues, af_latin_metrics_scale_dim`); glyph
//! shapes are then rasterised by ab_glyph at the stretched vertical scale, without hinting,
//! so edges are antialiased a little differently from FreeType's.

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale};
use image::{Rgb, RgbImage};
use std::sync::OnceLock;

use super::hinting::VerticalHinting;

/// Roboto Regular, the face A1111 draws legends with (`modules/images.py: get_font`);
/// provenance and licence in `host/assets/README.md`.
const ROBOTO_REGULAR: &[u8] = include_bytes!("../../../assets/fonts/Roboto-Regular.ttf");

/// The embedded face, parsed once for shaping (rustybuzz) and once for outlines (ab_glyph).
struct Faces {
    shaper: rustybuzz::Face<'static>,
    outlines: FontRef<'static>,
    units_per_em: f64,
    hinting: VerticalHinting,
}

fn faces() -> &'static Faces {
    static FACES: OnceLock<Faces> = OnceLock::new();
    FACES.get_or_init(|| {
        // The bytes are compiled in and known good: a parse failure is a build defect.
        let shaper = rustybuzz::Face::from_slice(ROBOTO_REGULAR, 0).expect("embedded Roboto");
        let outlines = FontRef::try_from_slice(ROBOTO_REGULAR).expect("embedded Roboto");
        let units_per_em = f64::from(shaper.units_per_em());
        let hinting = VerticalHinting::new(&shaper);
        Faces {
            shaper,
            outlines,
            units_per_em,
            hinting,
        }
    })
}

/// FreeType's `PIXEL()` in Pillow: 26.6 fixed point to whole pixels, halves rounded up.
fn pixel(v: i64) -> i64 {
    (v + 32).div_euclid(64)
}

/// One shaped glyph: pen position of its origin (26.6, from the start of the line).
struct Placed {
    glyph: GlyphId,
    pen_26_6: i64,
}

/// A line of text shaped at one size, with the integers Pillow derives from it.
pub struct ShapedLine {
    glyphs: Vec<Placed>,
    /// Sum of the advances (26.6): `ImageDraw.textlength` × 64.
    advance_26_6: i64,
    /// Pen-line and ink box in whole pixels, y up from the baseline:
    /// `bounding_box_and_anchors`' `x_min, x_max, y_min, y_max`.
    x_min: i64,
    x_max: i64,
    y_min: i64,
    y_max: i64,
    size: u32,
}

/// Roboto at one pixel size, as `ImageFont.truetype(Roboto, size)`.
#[derive(Debug, Clone, Copy)]
pub struct LegendFont {
    size: u32,
}

impl LegendFont {
    /// The font at `size` pixels per em (Pillow's `size`; at least 1).
    pub fn new(size: u32) -> Self {
        Self { size: size.max(1) }
    }

    /// Pixels per em.
    pub fn size(&self) -> u32 {
        self.size
    }

    fn scale(&self) -> f64 {
        f64::from(self.size) / faces().units_per_em
    }

    /// Font units to 26.6 at this size, rounded as FreeType's `FT_MulFix` rounds.
    fn units_to_26_6(&self, units: i32) -> i64 {
        (f64::from(units) * self.scale() * 64.0).round() as i64
    }

    /// `ImageFont.getmetrics()`: the ascender and descender in pixels (FreeType rounds the
    /// scaled ascender up and the descender down to whole pixels).
    pub fn metrics(&self) -> (i64, i64) {
        let face = &faces().shaper;
        let ascender = (f64::from(face.ascender()) * self.scale()).ceil() as i64;
        let descender = (f64::from(face.descender()) * self.scale()).floor() as i64;
        (ascender, -descender)
    }

    /// Shape one line (no line breaks) as Pillow's raqm layout does, and measure it.
    pub fn shape(&self, text: &str) -> ShapedLine {
        let faces = faces();
        let mut buffer = rustybuzz::UnicodeBuffer::new();
        buffer.push_str(text);
        let shaped = rustybuzz::shape(&faces.shaper, &[], buffer);
        let scale = self.px_scale();
        let vertical = faces.hinting.scale(self.size);
        let (mut x_min, mut x_max, mut y_min, mut y_max) = (0i64, 0i64, 0i64, 0i64);
        let mut position = 0i64;
        let mut glyphs = Vec::with_capacity(shaped.len());
        for (info, pos) in shaped.glyph_infos().iter().zip(shaped.glyph_positions()) {
            let glyph = GlyphId(info.glyph_id as u16);
            let origin = position + self.units_to_26_6(pos.x_offset);
            let px = pixel(origin);
            let py = pixel(self.units_to_26_6(pos.y_offset));
            // The hmtx advance and the GPOS adjustment are scaled separately, as FreeType
            // (advance) and HarfBuzz (kerning) do under Pillow.
            let hmtx = i32::from(faces.shaper.glyph_hor_advance(ttf(glyph)).unwrap_or(0));
            position += self.units_to_26_6(hmtx) + self.units_to_26_6(pos.x_advance - hmtx);
            x_max = x_max.max(pixel(position));
            if let Some(outlined) = faces
                .outlines
                .outline_glyph(glyph.with_scale_and_position(scale, point(0.0, 0.0)))
            {
                let b = outlined.px_bounds();
                x_min = x_min.min(px + b.min.x as i64);
                x_max = x_max.max(px + b.max.x as i64);
            }
            if let Some((top, bottom)) = faces.hinting.extents(&faces.shaper, ttf(glyph), &vertical)
            {
                y_max = y_max.max(py + top);
                y_min = y_min.min(py + bottom);
            }
            glyphs.push(Placed {
                glyph,
                pen_26_6: origin,
            });
        }
        ShapedLine {
            glyphs,
            advance_26_6: position,
            x_min,
            x_max,
            y_min,
            y_max,
            size: self.size,
        }
    }

    /// ab_glyph's scale is the ascent-to-descent height; Pillow's size is the em. Vertically
    /// the glyphs are stretched as the autohinter stretches them (x-height on a whole pixel).
    fn px_scale(&self) -> PxScale {
        let faces = faces();
        let face = &faces.shaper;
        let height = f64::from(face.ascender()) - f64::from(face.descender());
        let x = height * self.scale();
        let stretch = faces.hinting.scale(self.size).stretch();
        PxScale {
            x: x as f32,
            y: (x * stretch) as f32,
        }
    }

    /// `ImageDraw.textlength`: the advance of the line in pixels.
    pub fn text_length(&self, text: &str) -> f64 {
        self.shape(text).advance_26_6 as f64 / 64.0
    }

    /// `ImageDraw.textbbox((0, 0), text)` (anchor "la"): left, top, right, bottom.
    pub fn text_bbox(&self, text: &str) -> (i64, i64, i64, i64) {
        self.shape(text).bbox_la(self.metrics().0)
    }

    /// `ImageDraw.text(xy, text, fill, anchor="mm")`: the line centred on `xy` horizontally
    /// (half its advance) and vertically (half-way between ascender and descender), glyph
    /// coverage blended over the image as Pillow's `draw_bitmap` blends it.
    pub fn draw_text_mm(&self, image: &mut RgbImage, xy: (f64, f64), text: &str, fill: Rgb<u8>) {
        let line = self.shape(text);
        if line.glyphs.is_empty() {
            return;
        }
        let (ascender, descender) = self.metrics();
        let x_anchor = pixel(line.advance_26_6 / 2);
        let y_anchor = pixel((ascender - descender) * 64 / 2);
        // ImageDraw.text splits the point into an integer corner and a fraction that FreeType
        // adds to the pen (`font_render`'s x_start, y_start).
        let (x_int, x_frac) = (xy.0.trunc() as i64, xy.0.fract());
        let (y_int, y_frac) = (xy.1.trunc() as i64, xy.1.fract());
        let x_start = (x_frac * 64.0).round() as i64;
        let y_start = (y_frac * 64.0).round() as i64;
        let baseline = y_int + y_anchor - pixel(-y_start);
        let scale = self.px_scale();
        let outlines = &faces().outlines;
        for placed in &line.glyphs {
            let origin_x = x_int - x_anchor + pixel(x_start + placed.pen_26_6);
            let glyph = placed
                .glyph
                .with_scale_and_position(scale, point(origin_x as f32, baseline as f32));
            let Some(outlined) = outlines.outline_glyph(glyph) else {
                continue;
            };
            let bounds = outlined.px_bounds();
            outlined.draw(|gx, gy, coverage| {
                let x = bounds.min.x as i64 + i64::from(gx);
                let y = bounds.min.y as i64 + i64::from(gy);
                if x < 0 || y < 0 || x >= i64::from(image.width()) || y >= i64::from(image.height())
                {
                    return;
                }
                let alpha = (coverage.clamp(0.0, 1.0) * 255.0).round() as u32;
                let pixel = image.get_pixel_mut(x as u32, y as u32);
                for c in 0..3 {
                    pixel[c] = blend(pixel[c], fill[c], alpha);
                }
            });
        }
    }
}

impl ShapedLine {
    /// The box Pillow's `textbbox` reports for anchor "la" (the point is the ascender's
    /// left end): ink and pen line together, in whole pixels.
    fn bbox_la(&self, ascender: i64) -> (i64, i64, i64, i64) {
        if self.glyphs.is_empty() {
            return (0, 0, 0, 0);
        }
        (
            self.x_min,
            ascender - self.y_max,
            self.x_max,
            ascender - self.y_min,
        )
    }

    /// Pixel size the line was shaped at.
    pub fn size(&self) -> u32 {
        self.size
    }
}

fn ttf(glyph: GlyphId) -> rustybuzz::ttf_parser::GlyphId {
    rustybuzz::ttf_parser::GlyphId(glyph.0)
}

/// Pillow's 8-bit `BLEND`: `in1 + (in2 - in1) · a / 255`, rounded.
fn blend(background: u8, ink: u8, alpha: u32) -> u8 {
    let v = u32::from(background) * (255 - alpha) + u32::from(ink) * alpha;
    ((v + 127) / 255) as u8
}
