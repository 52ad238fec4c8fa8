//! "Inpaint area: Only masked": the region of the image that is generated at the job's size
//! (A1111 `modules/masking.py: get_crop_region_v2` and `expand_crop_region`).

use image::GrayImage;

/// A rectangle of the image: left, top (inclusive), right, bottom (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropRegion {
    /// Left edge.
    pub x1: i64,
    /// Top edge.
    pub y1: i64,
    /// Right edge (exclusive).
    pub x2: i64,
    /// Bottom edge (exclusive).
    pub y2: i64,
}

impl CropRegion {
    /// Width in pixels.
    pub fn width(&self) -> i64 {
        self.x2 - self.x1
    }

    /// Height in pixels.
    pub fn height(&self) -> i64 {
        self.y2 - self.y1
    }
}

/// The bounding box of the mask's non-zero pixels grown by `padding` on every side within the
/// image (Pillow `getbbox` + A1111's padding); `None` when the mask is empty.
pub fn mask_region(mask: &GrayImage, padding: u32) -> Option<CropRegion> {
    let (w, h) = mask.dimensions();
    let mut region: Option<CropRegion> = None;
    for (x, y, pixel) in mask.enumerate_pixels() {
        if pixel[0] == 0 {
            continue;
        }
        let (x, y) = (i64::from(x), i64::from(y));
        let r = region.get_or_insert(CropRegion {
            x1: x,
            y1: y,
            x2: x + 1,
            y2: y + 1,
        });
        r.x1 = r.x1.min(x);
        r.y1 = r.y1.min(y);
        r.x2 = r.x2.max(x + 1);
        r.y2 = r.y2.max(y + 1);
    }
    let pad = i64::from(padding);
    region.map(|r| CropRegion {
        x1: (r.x1 - pad).max(0),
        y1: (r.y1 - pad).max(0),
        x2: (r.x2 + pad).min(i64::from(w)),
        y2: (r.y2 + pad).min(i64::from(h)),
    })
}

/// Grows `region` to the aspect ratio of the job's `width`×`height` inside an image of
/// `image_width`×`image_height`, shifting it back inside where it sticks out (A1111
/// `expand_crop_region`, its float ratios and truncations included).
pub fn expand_to_aspect(
    region: CropRegion,
    width: u32,
    height: u32,
    image_width: u32,
    image_height: u32,
) -> CropRegion {
    let CropRegion {
        mut x1,
        mut y1,
        mut x2,
        mut y2,
    } = region;
    let ratio_region = (x2 - x1) as f64 / (y2 - y1) as f64;
    let ratio_job = f64::from(width) / f64::from(height);
    // One axis at a time: grow it symmetrically, then shift back inside and clip.
    let grow = |c1: &mut i64, c2: &mut i64, desired: f64, limit: i64| {
        let diff = (desired - (*c2 - *c1) as f64) as i64;
        *c1 -= diff.div_euclid(2);
        *c2 += diff - diff.div_euclid(2);
        if *c2 >= limit {
            let over = *c2 - limit;
            *c2 -= over;
            *c1 -= over;
        }
        if *c1 < 0 {
            *c2 -= *c1;
            *c1 = 0;
        }
        if *c2 >= limit {
            *c2 = limit;
        }
    };
    if ratio_region > ratio_job {
        let desired = (x2 - x1) as f64 / ratio_job;
        grow(&mut y1, &mut y2, desired, i64::from(image_height));
    } else {
        let desired = (y2 - y1) as f64 * ratio_job;
        grow(&mut x1, &mut x2, desired, i64::from(image_width));
    }
    CropRegion { x1, y1, x2, y2 }
}

/// sdhost's context growth for editors (beyond A1111): widens `region` symmetrically to at
/// least `min_width`×`min_height` (clamped to the image), so a small selection is generated
/// with enough surroundings.
pub fn grow_to_at_least(
    region: CropRegion,
    min_width: u32,
    min_height: u32,
    image_width: u32,
    image_height: u32,
) -> CropRegion {
    let widen = |c1: i64, c2: i64, wanted: i64, limit: i64| -> (i64, i64) {
        let missing = wanted.min(limit) - (c2 - c1);
        if missing <= 0 {
            return (c1, c2);
        }
        let mut start = c1 - missing / 2;
        let mut end = c2 + (missing - missing / 2);
        if start < 0 {
            end -= start;
            start = 0;
        }
        if end > limit {
            start -= end - limit;
            end = limit;
        }
        (start.max(0), end)
    };
    let (x1, x2) = widen(
        region.x1,
        region.x2,
        i64::from(min_width),
        i64::from(image_width),
    );
    let (y1, y2) = widen(
        region.y1,
        region.y2,
        i64::from(min_height),
        i64::from(image_height),
    );
    CropRegion { x1, y1, x2, y2 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_reaches_the_minimum_and_stays_inside() {
        let small = CropRegion {
            x1: 10,
            y1: 5,
            x2: 20,
            y2: 9,
        };
        // Centred where there is room, shifted at the image edge, capped by the image.
        assert_eq!(
            grow_to_at_least(small, 30, 10, 100, 100),
            CropRegion {
                x1: 0,
                y1: 2,
                x2: 30,
                y2: 12
            }
        );
        assert_eq!(
            grow_to_at_least(small, 512, 512, 64, 48),
            CropRegion {
                x1: 0,
                y1: 0,
                x2: 64,
                y2: 48
            }
        );
        // Already large enough: unchanged.
        assert_eq!(grow_to_at_least(small, 4, 4, 100, 100), small);
    }
}
