//! The vertical half of FreeType's autohinter (`autofit/aflatin.c`), as far as it decides the
//! glyph boxes Pillow measures legend lines with: a font without hinting instructions, such as
//! the embedded Roboto, is autohinted when Pillow loads it with `FT_LOAD_DEFAULT`.
//!
//! * Blue zones (`af_latin_metrics_init_blues`): for each zone a set of reference letters; the
//!   median of their flat extremes is the zone's reference, the median of their round ones
//!   its overshoot; a top zone whose overshoot lies below its reference collapses to their
//!   mean.
//! * Scale (`af_latin_metrics_scale_dim`): the vertical scale is stretched so the x-height
//!   overshoot lands on a whole pixel (rounded up from 0.375 px), unless that moves the em by
//!   two pixels or more; each zone's reference is rounded to a pixel, its overshoot kept at
//!   0, ½ or whole pixels from it.
//! * Edges: a glyph's top or bottom within a zone, or within `em/40` (at most ½ px) of it, is
//!   snapped to the nearer of its reference and overshoot (of the nearest such zone); other flat edges are rounded to a
//!   pixel; other round edges keep their scaled position.
//!
//! Pillow then takes the control box in whole pixels (top rounded up, bottom down). The model
//! leaves out stem and serif linking, so a few non-zone edges (the arm of `r`, the top of `t`
//! and `f`, brackets, punctuation) can come out one pixel off FreeType.

use rustybuzz::ttf_parser::{Face, GlyphId, OutlineBuilder};

/// A blue zone in font units: the flat reference and the round overshoot.
#[derive(Debug, Clone, Copy)]
struct Zone {
    reference: i64,
    overshoot: i64,
}

/// Reference letters of the Latin zones (`autofit/afblue.dat`), tops then bottoms.
const TOP_ZONES: [&str; 3] = ["THEZOCQS", "fijkdbh", "xzroesc"];
const BOTTOM_ZONES: [&str; 2] = ["HEZLOCUS", "pqgjy"];
/// Index of the x-height zone in [`TOP_ZONES`]: the one the scale is fitted to.
const X_HEIGHT: usize = 2;

/// The font's blue zones.
#[derive(Debug)]
pub struct VerticalHinting {
    tops: Vec<Zone>,
    bottoms: Vec<Zone>,
    units_per_em: i64,
}

/// The autohinter's vertical scale at one size (16.16, font units to 26.6).
#[derive(Debug, Clone, Copy)]
pub struct VerticalScale {
    scale: i64,
    unstretched: i64,
}

impl VerticalScale {
    /// How much the x-height fitting stretched the scale (1 when it did not).
    pub fn stretch(&self) -> f64 {
        self.scale as f64 / self.unstretched as f64
    }
}

/// FreeType's `FT_MulFix`: `a · b / 65536`, rounded half away from zero.
fn mul_fix(a: i64, b: i64) -> i64 {
    let v = (a.abs() * b.abs() + 0x8000) >> 16;
    if (a < 0) != (b < 0) {
        -v
    } else {
        v
    }
}

/// FreeType's `FT_MulDiv`: `a · b / c`, rounded half away from zero.
fn mul_div(a: i64, b: i64, c: i64) -> i64 {
    let v = (a.abs() * b.abs() + c.abs() / 2) / c.abs();
    if ((a < 0) != (b < 0)) != (c < 0) {
        -v
    } else {
        v
    }
}

/// `FT_PIX_ROUND` on 26.6.
fn pix_round(v: i64) -> i64 {
    (v + 32) & !63
}

/// Extremes of a glyph's outline and whether each is reached by a horizontal segment.
struct Extremes {
    last: (f32, f32),
    top: f32,
    bottom: f32,
    flat_top: bool,
    flat_bottom: bool,
}

impl OutlineBuilder for Extremes {
    fn move_to(&mut self, x: f32, y: f32) {
        self.last = (x, y);
    }
    fn line_to(&mut self, x: f32, y: f32) {
        if y == self.last.1 && x != self.last.0 {
            self.flat_top |= y == self.top;
            self.flat_bottom |= y == self.bottom;
        }
        self.last = (x, y);
    }
    fn quad_to(&mut self, _: f32, _: f32, x: f32, y: f32) {
        self.last = (x, y);
    }
    fn curve_to(&mut self, _: f32, _: f32, _: f32, _: f32, x: f32, y: f32) {
        self.last = (x, y);
    }
    fn close(&mut self) {}
}

/// The glyph's top and bottom in font units, each with whether it is flat.
fn extremes(face: &Face, glyph: GlyphId) -> Option<((i64, bool), (i64, bool))> {
    let bbox = face.glyph_bounding_box(glyph)?;
    let mut e = Extremes {
        last: (0.0, 0.0),
        top: f32::from(bbox.y_max),
        bottom: f32::from(bbox.y_min),
        flat_top: false,
        flat_bottom: false,
    };
    face.outline_glyph(glyph, &mut e)?;
    Some((
        (i64::from(bbox.y_max), e.flat_top),
        (i64::from(bbox.y_min), e.flat_bottom),
    ))
}

/// One zone from its reference letters (`af_latin_metrics_init_blues`, simplified to the
/// letters' extreme points).
fn zone(face: &Face, letters: &str, top: bool) -> Option<Zone> {
    let (mut flats, mut rounds) = (Vec::new(), Vec::new());
    for c in letters.chars() {
        let Some((t, b)) = face.glyph_index(c).and_then(|g| extremes(face, g)) else {
            continue;
        };
        let (y, flat) = if top { t } else { b };
        if flat {
            flats.push(y)
        } else {
            rounds.push(y)
        }
    }
    flats.sort_unstable();
    rounds.sort_unstable();
    let (mut reference, mut overshoot) =
        match (flats.get(flats.len() / 2), rounds.get(rounds.len() / 2)) {
            (Some(&f), Some(&r)) => (f, r),
            (Some(&f), None) => (f, f),
            (None, Some(&r)) => (r, r),
            (None, None) => return None,
        };
    if (top && overshoot < reference) || (!top && overshoot > reference) {
        reference = (reference + overshoot) / 2;
        overshoot = reference;
    }
    Some(Zone {
        reference,
        overshoot,
    })
}

impl VerticalHinting {
    /// The zones of `face`.
    pub fn new(face: &Face) -> Self {
        Self {
            tops: TOP_ZONES
                .iter()
                .filter_map(|l| zone(face, l, true))
                .collect(),
            bottoms: BOTTOM_ZONES
                .iter()
                .filter_map(|l| zone(face, l, false))
                .collect(),
            units_per_em: i64::from(face.units_per_em()),
        }
    }

    /// The vertical scale at `size` px per em, stretched to fit the x-height.
    pub fn scale(&self, size: u32) -> VerticalScale {
        let unstretched = ((i64::from(size) * 64) << 16) / self.units_per_em.max(1);
        let mut scale = unstretched;
        if let Some(x) = self.tops.get(X_HEIGHT) {
            let scaled = mul_fix(x.overshoot, scale);
            let fitted = (scaled + 40) & !63;
            if scaled > 0 && fitted != scaled {
                let stretched = mul_div(scale, fitted, scaled);
                // Not when the em would move by two pixels or more.
                if mul_fix(self.units_per_em, stretched - scale).abs() & !127 == 0 {
                    scale = stretched;
                }
            }
        }
        VerticalScale { scale, unstretched }
    }

    /// Where an edge at `y` font units ends up (26.6), snapped to a zone when captured.
    fn edge(&self, y: i64, flat: bool, zones: &[Zone], scale: i64) -> i64 {
        let capture = mul_fix(self.units_per_em / 40, scale).min(32);
        // The nearest zone that holds the edge or lies within the capture distance.
        let mut best: Option<(i64, &Zone)> = None;
        for z in zones {
            let inside = y >= z.reference.min(z.overshoot) && y <= z.reference.max(z.overshoot);
            let near = mul_fix((y - z.reference).abs().min((y - z.overshoot).abs()), scale);
            let dist = if inside { 0 } else { near };
            if (inside || near < capture) && best.is_none_or(|(d, _)| dist < d) {
                best = Some((dist, z));
            }
        }
        if let Some((_, z)) = best {
            let reference = pix_round(mul_fix(z.reference, scale));
            if (y - z.reference).abs() <= (y - z.overshoot).abs() {
                return reference;
            }
            let delta = z.overshoot - z.reference;
            let d = mul_fix(delta.abs(), scale);
            let d = if d < 32 {
                0
            } else if d < 64 {
                32 + ((d - 32 + 16) & !31)
            } else {
                pix_round(d)
            };
            return reference + if delta < 0 { -d } else { d };
        }
        let scaled = mul_fix(y, scale);
        if flat {
            pix_round(scaled)
        } else {
            scaled
        }
    }

    /// The glyph's hinted top and bottom in whole pixels (the control box as
    /// `FT_Glyph_Get_CBox(FT_GLYPH_BBOX_PIXELS)` gives it), y up from the baseline.
    pub fn extents(
        &self,
        face: &Face,
        glyph: GlyphId,
        scale: &VerticalScale,
    ) -> Option<(i64, i64)> {
        let ((top, flat_top), (bottom, flat_bottom)) = extremes(face, glyph)?;
        let top = self.edge(top, flat_top, &self.tops, scale.scale);
        let bottom = self.edge(bottom, flat_bottom, &self.bottoms, scale.scale);
        Some(((top + 63).div_euclid(64), bottom.div_euclid(64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_as_freetype() {
        assert_eq!(mul_fix(1456, 40960), 910); // 1456 units at 20 px/em (scale 20·64/2048)
        assert_eq!(mul_fix(-1456, 40960), -910);
        assert_eq!(mul_div(10, 3, 4), 8);
        assert_eq!(pix_round(95), 64);
        assert_eq!(pix_round(96), 128);
    }
}
