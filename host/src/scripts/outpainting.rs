//! What A1111's two outpainting scripts share (`scripts/outpainting_mk_2.py`,
//! `scripts/poor_mans_outpainting.py`): the directions to grow, how "Pixels to expand" is spread
//! so the grown picture's sides are multiples of 64, and Pillow's rectangle for their masks.

use image::{GrayImage, Luma};

/// Which sides grow ("Outpainting direction"; A1111's default is all four).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Directions {
    /// "left".
    pub left: bool,
    /// "right".
    pub right: bool,
    /// "up".
    pub up: bool,
    /// "down".
    pub down: bool,
}

impl Default for Directions {
    fn default() -> Self {
        Directions::ALL
    }
}

/// Why outpainting cannot run with the given arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutpaintError {
    /// A direction that is not one of A1111's four.
    #[error("unknown outpainting direction {0:?} (left, right, up, down)")]
    UnknownDirection(String),
    /// Pillow refuses a rectangle whose end lies before its start (a mask blur too large for
    /// the picture).
    #[error("the mask blur ({blur}) is too large for a {width}x{height} picture: the {what} mask's rectangle would end before it starts")]
    RectangleInverted {
        /// Which mask.
        what: &'static str,
        /// The script's mask blur.
        blur: u32,
        /// Picture width.
        width: u32,
        /// Picture height.
        height: u32,
    },
    /// Nothing would grow: pixels 0 or no direction.
    #[error("nothing to outpaint: choose at least one direction and a positive number of pixels")]
    Nothing,
}

impl Directions {
    /// All four sides.
    pub const ALL: Directions = Directions {
        left: true,
        right: true,
        up: true,
        down: true,
    };

    /// From A1111's CheckboxGroup values ("left", "right", "up", "down", any order).
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, OutpaintError> {
        let mut directions = Directions {
            left: false,
            right: false,
            up: false,
            down: false,
        };
        for name in names {
            match name.as_ref() {
                "left" => directions.left = true,
                "right" => directions.right = true,
                "up" => directions.up = true,
                "down" => directions.down = true,
                other => return Err(OutpaintError::UnknownDirection(other.to_string())),
            }
        }
        Ok(directions)
    }

    /// A1111's names of the chosen sides, in its order.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.left, "left"),
            (self.right, "right"),
            (self.up, "up"),
            (self.down, "down"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// How many pixels each side grows by and the grown size (both scripts' `run`): the sum is
/// rounded up to a multiple of 64 and spread over the chosen sides, left/up taking
/// `pixels · extra / (sum of the pair)` and right/down the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expansion {
    /// Pixels added on the left.
    pub left: u32,
    /// On the right.
    pub right: u32,
    /// Above.
    pub up: u32,
    /// Below.
    pub down: u32,
    /// The grown width, a multiple of 64.
    pub width: u32,
    /// The grown height, a multiple of 64.
    pub height: u32,
}

/// `math.ceil(v / 64) * 64`.
pub fn ceil64(v: u32) -> u32 {
    v.div_ceil(64) * 64
}

impl Expansion {
    /// The expansion of a `width`×`height` picture by `pixels` towards `directions`.
    pub fn new(width: u32, height: u32, pixels: u32, directions: Directions) -> Self {
        let pick = |on: bool| if on { pixels } else { 0 };
        let (mut left, mut right) = (pick(directions.left), pick(directions.right));
        let (mut up, mut down) = (pick(directions.up), pick(directions.down));
        let target_w = ceil64(width + left + right);
        let target_h = ceil64(height + up + down);
        if left > 0 {
            left = left * (target_w - width) / (left + right);
        }
        if right > 0 {
            right = target_w - width - left;
        }
        if up > 0 {
            up = up * (target_h - height) / (up + down);
        }
        if down > 0 {
            down = target_h - height - up;
        }
        Expansion {
            left,
            right,
            up,
            down,
            width: target_w,
            height: target_h,
        }
    }

    /// How many sides grow (A1111's `state.job_count` per batch in Outpainting mk2).
    pub fn sides(&self) -> usize {
        [self.left, self.right, self.up, self.down]
            .iter()
            .filter(|&&p| p > 0)
            .count()
    }
}

/// `ImageDraw.rectangle((x0, y0, x1, y1), fill=value)`: both corners inclusive, clipped to the
/// picture; `None` where Pillow raises (x1 < x0 or y1 < y0).
pub fn pillow_rectangle(
    image: &mut GrayImage,
    (x0, y0, x1, y1): (i64, i64, i64, i64),
    value: u8,
) -> Option<()> {
    if x1 < x0 || y1 < y0 {
        return None;
    }
    let (w, h) = (i64::from(image.width()), i64::from(image.height()));
    for y in y0.max(0)..=y1.min(h - 1) {
        for x in x0.max(0)..=x1.min(w - 1) {
            image.put_pixel(x as u32, y as u32, Luma([value]));
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_rounds_the_sum_up_to_64_and_splits_it() {
        // 100 + 2·128 = 356 → 384: left 128·284/256 = 142, right the other 142.
        let e = Expansion::new(100, 64, 128, Directions::ALL);
        assert_eq!((e.left, e.right, e.width), (142, 142, 384));
        assert_eq!((e.up, e.down, e.height), (128, 128, 320));
        let only_left = Directions::from_names(&["left"]).unwrap();
        let e = Expansion::new(100, 64, 8, only_left);
        assert_eq!(
            (e.left, e.right, e.up, e.down, e.width, e.height),
            (28, 0, 0, 0, 128, 64)
        );
        assert_eq!(e.sides(), 1);
        assert!(Directions::from_names(&["sideways"]).is_err());
    }

    #[test]
    fn rectangles_are_inclusive_and_clipped_like_pillows() {
        let mut m = GrayImage::from_pixel(4, 3, Luma([255]));
        pillow_rectangle(&mut m, (1, -5, 9, 1), 0).unwrap();
        assert_eq!(
            m.as_raw(),
            &[255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]
        );
        assert!(pillow_rectangle(&mut m, (3, 0, 2, 1), 0).is_none());
    }
}
