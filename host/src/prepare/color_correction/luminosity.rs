//! blendmodes 2022's `blendLayers(background, foreground, BlendType.LUMINOSITY)` for opaque RGB
//! images (`blendmodes/blend.py: blendLayers`, `luminosity`, `_setLum`, `_lum`), as A1111's
//! `apply_color_correction` calls it: the background (the colour-matched image) moved to the
//! foreground's (the generated image's) luma.
//!
//! Everything is `float64`: the layers are `uint8 / 255`; opaque alpha makes the composite
//! exactly the blend; the result is clipped to [0, 1], multiplied by 255 and cast to `uint8`,
//! which truncates (a NaN, from a 0/0 in `_setLum`'s gamut clipping, casts to 0 on x86-64, as
//! Rust's `as u8` does).

/// Rec. 601 luma of linear-scaled channel values, summed left to right like `_lum`.
fn luma(c: [f64; 3]) -> f64 {
    c[0] * 0.299 + c[1] * 0.587 + c[2] * 0.114
}

/// One pixel of the luminosity blend: `background`'s colour with `foreground`'s luma.
pub fn luminosity_blend(background: [u8; 3], foreground: [u8; 3]) -> [u8; 3] {
    let mut c = background.map(|v| f64::from(v) / 255.0);
    let target = luma(foreground.map(|v| f64::from(v) / 255.0));
    let delta = target - luma(c);
    c = c.map(|v| v + delta);
    // `_setLum`'s gamut clipping; its luma, minimum and maximum are taken once, before both
    // steps, while the second step sees the colour the first one wrote (a NumPy view).
    let l = luma(c);
    let min = c[0].min(c[1]).min(c[2]);
    let max = c[0].max(c[1]).max(c[2]);
    if min < 0.0 {
        c = c.map(|v| l + ((v - l) * l) / (l - min));
    }
    if max > 1.0 {
        c = c.map(|v| l + ((v - l) * (1.0 - l)) / (max - l));
    }
    c.map(|v| (v.clamp(0.0, 1.0) * 255.0) as u8)
}
