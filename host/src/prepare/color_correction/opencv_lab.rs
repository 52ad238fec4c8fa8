//! OpenCV 4.13's 8-bit sRGB ⇄ CIE L\*a\*b\* conversions, bit for bit: `cv2.cvtColor` with
//! `COLOR_RGB2LAB` (OpenCV `modules/imgproc/src/color_lab.cpp: RGB2Lab_b`) and `COLOR_LAB2RGB`
//! (`Lab2RGB_b`, which with `enableBitExactness` always takes `Lab2RGBinteger`).
//!
//! Both are integer arithmetic on lookup tables that OpenCV builds once in software floating
//! point (`initLabTabs`). Its single and double operations are IEEE ones, which Rust's `f32` and
//! `f64` reproduce exactly; its cube root (`modules/core/src/softfloat.cpp: f32_cbrt`) is an
//! approximation truncated to single precision, so it is ported as is (a correctly rounded cube
//! root changes 17 888 of the 3·2²⁴ RGB → Lab values); its `pow` differs from `f64::powf` by a
//! few double ulps at most, which the rounding to single precision that follows absorbs. Its
//! rounding of those floats to integers (`cvRound` of a softfloat) is ties-to-even.
//!
//! The SIMD loops compute the same integers as the scalar ones and OpenCV's IPP code is only
//! for linear RGB (`COLOR_LRGB2LAB`), so this one scalar port is what cv2 gives for every input,
//! which the tests check on all 2²⁴ values of each direction.

use std::sync::OnceLock;

/// Fixed-point shift of the RGB → XYZ matrix (`xyz_shift`, `lab_shift`).
const LAB_SHIFT: u32 = 12;
/// Extra bits of the gamma table (`gamma_shift`).
const GAMMA_SHIFT: u32 = 3;
/// Shift of the cube-root table's values (`lab_shift2`).
const LAB_SHIFT2: u32 = LAB_SHIFT + GAMMA_SHIFT;
/// Fixed-point bits of the Lab → RGB path (`Lab2RGBinteger::base_shift`).
const BASE_SHIFT: u32 = 14;
/// Its base (`LUT_BASE`, `Lab2RGBinteger::BASE`).
const BASE: i32 = 1 << BASE_SHIFT;
/// Bits of the index into the inverse gamma table (`inv_gamma_shift`).
const INV_GAMMA_SHIFT: u32 = 12;
/// Smallest index into the a/b → X/Z table (`minABvalue`).
const MIN_AB: i32 = -8145;

/// sRGB → XYZ (D65), rows X, Y, Z; the same doubles as OpenCV's `sRGB2XYZ_D65`.
const RGB_TO_XYZ: [[f64; 3]; 3] = [
    [0.412453, 0.357580, 0.180423],
    [0.212671, 0.715160, 0.072169],
    [0.019334, 0.119193, 0.950227],
];
/// XYZ → sRGB (D65), rows R, G, B; OpenCV's `XYZ2sRGB_D65`.
const XYZ_TO_RGB: [[f64; 3]; 3] = [
    [3.240479, -1.53715, -0.498535],
    [-0.969256, 1.875991, 0.041556],
    [0.055648, -0.204043, 1.057311],
];
/// The D65 white point (OpenCV's `D65`).
const WHITE: [f64; 3] = [0.950456, 1.0, 1.088754];

/// The tables and fixed-point matrices of both directions.
struct Tables {
    /// sRGB value → linear light × 255·2³ (`sRGBGammaTab_b`).
    gamma: [u16; 256],
    /// X/Xn (×255·2³) → f(t) × 2¹⁵, cube root above (6/29)³, linear below (`LabCbrtTab_b`).
    cbrt: Vec<u16>,
    /// `RGB_TO_XYZ` divided by the white point, × 2¹² (`RGB2Lab_b::coeffs`).
    to_xyz: [[i32; 3]; 3],
    /// 8-bit L → (Y × 2¹⁴, f(Y) × 2¹⁴) (`LabToYF_b`).
    l_to_y: [(i32, i32); 256],
    /// f(X/Xn) × 2¹⁴, offset by `MIN_AB` → X/Xn × 2¹⁴ (`abToXZ_b`).
    ab_to_xz: Vec<i32>,
    /// Linear light × 2¹² → sRGB value (`sRGBInvGammaTab_b`).
    inv_gamma: Vec<u8>,
    /// `XYZ_TO_RGB` times the white point, × 2¹² (`Lab2RGBinteger::coeffs`).
    to_rgb: [[i32; 3]; 3],
}

/// The tables, built on first use (OpenCV's `initLabTabs` also runs once).
fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(Tables::build)
}

/// `cvRound` of a softfloat: nearest integer, ties to even.
fn round_f32(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// `cvRound` of a softdouble: nearest integer, ties to even.
fn round_f64(v: f64) -> i32 {
    v.round_ties_even() as i32
}

/// `CV_DESCALE`: divide by 2^n, rounding halves up.
fn descale(v: i32, n: u32) -> i32 {
    (v + (1 << (n - 1))) >> n
}

/// sRGB companding to linear light, as OpenCV's `applyGamma` (in double, result single).
fn apply_gamma(x: f32) -> f32 {
    let x = f64::from(x);
    let shift = 11.0 / 200.0;
    let out = if x <= 809.0 / 20000.0 {
        x / (323.0 / 25.0)
    } else {
        ((x + shift) / (1.0 + shift)).powf(12.0 / 5.0)
    };
    out as f32
}

/// Linear light to sRGB companding, as OpenCV's `applyInvGamma`.
fn apply_inv_gamma(x: f32) -> f32 {
    let x = f64::from(x);
    let shift = 11.0 / 200.0;
    let out = if x <= 7827.0 / 2_500_000.0 {
        x * (323.0 / 25.0)
    } else {
        x.powf(1.0 / (12.0 / 5.0)) * (1.0 + shift) - shift
    };
    out as f32
}

/// OpenCV's software cube root (`f32_cbrt`, Turkowski's method): a rational approximation on
/// the mantissa scaled into [1/8, 1), computed in double and *truncated* to single precision.
/// Only called with finite positive normal numbers.
fn opencv_cbrt(x: f32) -> f32 {
    // The quartic rational approximation's coefficients (error below 2⁻²⁴ on [1/8, 1)), highest
    // power first, as the doubles OpenCV uses; the denominator's constant term is 1.
    const NUM: [u64; 5] = [
        0x4046_a09e_6653_ba70,
        0x4068_08f4_6c61_16e0,
        0x405d_ca97_439c_ae14,
        0x402a_dd70_d282_7500,
        0x3fc4_f15f_83f5_5d2d,
    ];
    const DEN: [u64; 4] = [
        0x402d_9e20_660e_db21,
        0x4062_ff15_c028_5815,
        0x4065_10d0_6a81_12ce,
        0x4040_fecb_c9e2_c375,
    ];
    let bits = x.to_bits();
    if bits & 0x7fff_ffff == 0 {
        return 0.0;
    }
    let exponent = ((bits >> 23) & 0xff) as i32 - 127;
    let mut shift = exponent % 3;
    if shift >= 0 {
        shift -= 3;
    }
    let root_exponent = (exponent - shift) / 3 - 1;
    let fr = f64::from_bits((((shift + 1023) as u64) << 52) | (u64::from(bits & 0x7f_ffff) << 29));
    let horner = |coeffs: &[u64], init: f64| {
        coeffs
            .iter()
            .fold(init, |acc, &c| acc * fr + f64::from_bits(c))
    };
    let num = horner(&NUM[1..], f64::from_bits(NUM[0]));
    let den = horner(&DEN[1..], f64::from_bits(DEN[0])) * fr + 1.0;
    let root = num / den;
    let mantissa = ((root.to_bits() & 0x000f_ffff_ffff_ffff) >> 29) as u32;
    f32::from_bits((bits & 0x8000_0000) | (((root_exponent + 127) as u32) << 23) | mantissa)
}

impl Tables {
    fn build() -> Tables {
        let lthresh = 216.0f32 / 24389.0;
        let lscale = 841.0f32 / 108.0;
        let lbias = 16.0f32 / 116.0;
        let f255 = 255.0f32;

        let mut gamma = [0u16; 256];
        for (i, g) in gamma.iter_mut().enumerate() {
            let x = i as f32 / f255;
            *g = round_f32((255 << GAMMA_SHIFT) as f32 * apply_gamma(x)) as u16;
        }

        let cbrt_scale = 1.0f32 / (255 << GAMMA_SHIFT) as f32;
        let cbrt = (0..256 * 3 / 2 * (1 << GAMMA_SHIFT))
            .map(|i| {
                let x = cbrt_scale * i as f32;
                let f = if x < lthresh {
                    x.mul_add(lscale, lbias)
                } else {
                    opencv_cbrt(x)
                };
                round_f32((1 << LAB_SHIFT2) as f32 * f) as u16
            })
            .collect();

        let lshift = f64::from(1 << LAB_SHIFT);
        let to_xyz = std::array::from_fn(|row| {
            std::array::from_fn(|col| round_f64(lshift * RGB_TO_XYZ[row][col] / WHITE[row]))
        });
        let to_rgb = std::array::from_fn(|row| {
            std::array::from_fn(|col| round_f64(lshift * XYZ_TO_RGB[row][col] * WHITE[col]))
        });

        let base = BASE as f32;
        let l_to_y = std::array::from_fn(|i| {
            let i = i as i32;
            if i <= 20 {
                // Below L = 8 (8·255/100 = 20.4): Y = L/903.3, f(Y) = 7.787·Y + 16/116.
                let y = round_f32((i * BASE * 20 * 9) as f32 / (17 * 29 * 29 * 29) as f32);
                let fy =
                    round_f32(base * (16.0f32 / 116.0 + (i * 5) as f32 / (3 * 17 * 29) as f32));
                (y, fy)
            } else {
                let fy =
                    (i * 100 * BASE) as f32 / (255 * 116) as f32 + (16 * BASE) as f32 / 116.0f32;
                let y = round_f32(fy * fy * fy / (BASE * BASE) as f32);
                (y, round_f32(fy))
            }
        });

        let ab_to_xz = (MIN_AB..BASE * 9 / 4 + MIN_AB)
            .map(|i| {
                if i <= 3390 {
                    // Below 6/29: (f - 16/116) / 7.787, with 7.787 = 841/108.
                    i * 108 / 841 - BASE * 16 / 116 * 108 / 841
                } else {
                    i * i / BASE * i / BASE
                }
            })
            .collect();

        let inv_scale = 1.0f32 / (1 << INV_GAMMA_SHIFT) as f32;
        let inv_gamma = (0..1 << INV_GAMMA_SHIFT)
            .map(|i| round_f32(f255 * apply_inv_gamma(inv_scale * i as f32)).clamp(0, 255) as u8)
            .collect();

        Tables {
            gamma,
            cbrt,
            to_xyz,
            l_to_y,
            ab_to_xz,
            inv_gamma,
            to_rgb,
        }
    }
}

/// One pixel of `cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)` for `uint8`: L·255/100, a + 128, b + 128.
pub fn rgb_to_lab(rgb: [u8; 3]) -> [u8; 3] {
    let t = tables();
    let linear = rgb.map(|v| i32::from(t.gamma[usize::from(v)]));
    let [fx, fy, fz] = t.to_xyz.map(|row| {
        let sum = row[0] * linear[0] + row[1] * linear[1] + row[2] * linear[2];
        i32::from(t.cbrt[descale(sum, LAB_SHIFT) as usize])
    });
    // L = 116·f(Y) − 16, scaled by 255/100 with OpenCV's rounded integer factors.
    let l_scale = (116 * 255 + 50) / 100;
    let l_shift = -((16 * 255 * (1 << LAB_SHIFT2) + 50) / 100);
    let l = descale(l_scale * fy + l_shift, LAB_SHIFT2);
    let a = descale(500 * (fx - fy) + (128 << LAB_SHIFT2), LAB_SHIFT2);
    let b = descale(200 * (fy - fz) + (128 << LAB_SHIFT2), LAB_SHIFT2);
    [l, a, b].map(|v| v.clamp(0, 255) as u8)
}

/// One pixel of `cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)` for `uint8`.
pub fn lab_to_rgb(lab: [u8; 3]) -> [u8; 3] {
    let t = tables();
    let (y, fy) = t.l_to_y[usize::from(lab[0])];
    let (a, b) = (i32::from(lab[1]), i32::from(lab[2]));
    // a/500 and b/200 in 2¹⁴ fixed point, by OpenCV's multiply-and-shift approximations.
    let a_div = ((5 * a * 53687 + (1 << 7)) >> 13) - 128 * BASE / 500;
    let b_div = ((b * 41943 + (1 << 4)) >> 9) - 128 * BASE / 200 + 1;
    let x = t.ab_to_xz[(fy + a_div - MIN_AB) as usize];
    let z = t.ab_to_xz[(fy - b_div - MIN_AB) as usize];
    let shift = LAB_SHIFT + (BASE_SHIFT - INV_GAMMA_SHIFT);
    t.to_rgb.map(|row| {
        let linear = descale(row[0] * x + row[1] * y + row[2] * z, shift);
        t.inv_gamma[linear.clamp(0, (1 << INV_GAMMA_SHIFT) - 1) as usize]
    })
}
