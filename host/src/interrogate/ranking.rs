//! How CLIP ranks one category's candidates against the picture, with A1111's numerics
//! (`modules/interrogate.py: InterrogateModels.rank`), and how a match is written into the
//! prompt (`InterrogateModels.interrogate`).

use tch::{Kind, Tensor};

/// One ranked candidate: its index in the ranked list and its softmax probability.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RankedMatch {
    /// Index into the candidates that were ranked (after the dict limit).
    pub index: usize,
    /// Softmax probability over the category's candidates, in (0, 1].
    pub probability: f32,
}

/// Features that cannot be compared (a CLIP implementation fault, not user input).
#[derive(Debug, thiserror::Error)]
#[error(
    "CLIP features cannot be compared: image features {image:?} (expected [1, E]) against text \
     features {text:?} (expected [N, E])"
)]
pub struct RankError {
    /// Shape of the image features.
    pub image: Vec<i64>,
    /// Shape of the text features.
    pub text: Vec<i64>,
}

/// The `topn` best candidates of `text_features` [N, E] for `image_features` [1, E], best
/// first, as A1111 ranks them: both normalised per row, `softmax(100 · f_img · f_txtᵀ)` in fp32
/// (the literal 100, not CLIP's logit scale), then `topk(min(topn, N))`, so ties come out in
/// torch's `topk` order.
///
/// A1111 accumulates the softmax into a zero tensor and divides by the number of image rows;
/// with one row both are exact identities (0 + p = p, p / 1 = p) and are left out.
pub fn rank(
    image_features: &Tensor,
    text_features: &Tensor,
    topn: usize,
) -> Result<Vec<RankedMatch>, RankError> {
    let (image_size, text_size) = (image_features.size(), text_features.size());
    let shapes_fit = image_size.len() == 2
        && image_size[0] == 1
        && text_size.len() == 2
        && image_size[1] == text_size[1]
        && image_size[1] > 0;
    if !shapes_fit {
        return Err(RankError {
            image: image_size,
            text: text_size,
        });
    }
    let count = usize::try_from(text_size[0]).unwrap_or(0);
    let k = topn.min(count);
    if k == 0 {
        return Ok(Vec::new());
    }
    let image = normalized(image_features);
    let text = normalized(text_features);
    // `100.0 * f_img @ f_txt.T` groups as `(100 · f_img) @ f_txtᵀ`.
    let similarity = (image * 100.0).matmul(&text.tr()).softmax(-1, Kind::Float);
    let (probabilities, indices) = similarity.topk(k as i64, -1, true, true);
    let probabilities = Vec::<f32>::try_from(probabilities.reshape([-1])).unwrap_or_default();
    let indices = Vec::<i64>::try_from(indices.reshape([-1])).unwrap_or_default();
    Ok(indices
        .into_iter()
        .zip(probabilities)
        .map(|(index, probability)| RankedMatch {
            index: index as usize,
            probability,
        })
        .collect())
}

/// Rows divided by their L2 norm in fp32 on the CPU: `x /= x.norm(dim=-1, keepdim=True)`,
/// which Python torch computes as `linalg.vector_norm(x, 2, [-1], keepdim=True)`, as ATen's
/// `norm` (called here) does too.
fn normalized(features: &Tensor) -> Tensor {
    let features = features.to_device(tch::Device::Cpu).to_kind(Kind::Float);
    let norm = features.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true);
    features / norm
}

/// One match as A1111 appends it to the prompt: `", text"`, or with `interrogate_return_ranks`
/// `", (text:0.123)"`. Nothing in `text` is escaped, so `Name (Group)` reads as emphasis
/// syntax in the prompt, as in A1111.
///
/// The number is A1111's `f"{score/100:.3f}"` of `score = probability·100` computed in
/// float32 (numpy scalars), so the printed value is `f32(f32(p·100)/100)`, which can differ
/// from `p` in the last bit. Rust's `{:.3}` and Python's `.3f` both round the exact binary
/// value, ties to even.
pub fn format_match(text: &str, probability: f32, return_ranks: bool) -> String {
    if return_ranks {
        let shown = (probability * 100.0) / 100.0;
        format!(", ({text}:{:.3})", f64::from(shown))
    } else {
        format!(", {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(values: &[&[f32]]) -> Tensor {
        let width = values[0].len() as i64;
        let flat: Vec<f32> = values.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).reshape([-1, width])
    }

    #[test]
    fn ranks_by_softmax_of_100_cosines() {
        let image = rows(&[&[3.0, 4.0, 0.0]]);
        let text = rows(&[
            &[1.0, 0.0, 0.0],
            &[0.0, 2.0, 0.0],
            &[0.0, 0.0, 5.0],
            &[0.6, 0.8, 0.0],
            &[0.0, 1.0, 1.0],
        ]);
        let matches = rank(&image, &text, 3).unwrap();
        // Cosines with (0.6, 0.8, 0): 0.6, 0.8, 0, 1, 0.8/√2 ≈ 0.566.
        let cosines = [0.6f64, 0.8, 0.0, 1.0, 0.8 / 2f64.sqrt()];
        let sum: f64 = cosines.iter().map(|c| (100.0 * (c - 1.0)).exp()).sum();
        let expected = |i: usize| (100.0 * (cosines[i] - 1.0)).exp() / sum;
        let order: Vec<_> = matches.iter().map(|m| m.index).collect();
        assert_eq!(order, [3, 1, 0]);
        for m in &matches {
            assert!((f64::from(m.probability) - expected(m.index)).abs() < 1e-6);
        }
    }

    #[test]
    fn topn_is_capped_by_the_list_and_zero_gives_nothing() {
        let image = rows(&[&[1.0, 0.0]]);
        let text = rows(&[&[1.0, 0.0], &[0.0, 1.0]]);
        assert_eq!(rank(&image, &text, 5).unwrap().len(), 2);
        assert!(rank(&image, &text, 0).unwrap().is_empty());
        let empty = Tensor::zeros([0, 2], (Kind::Float, tch::Device::Cpu));
        assert!(rank(&image, &empty, 3).unwrap().is_empty());
    }

    #[test]
    fn ties_come_out_in_topk_order() {
        // 16 equal candidates: torch 2.13's CPU `topk` returns them in this order (printed by
        // `torch.full((1, 16), 0.0625).topk(16)` in the project's venv), not index order.
        let image = rows(&[&[1.0, 2.0]]);
        let text = Tensor::ones([16, 2], (Kind::Float, tch::Device::Cpu));
        let matches = rank(&image, &text, 16).unwrap();
        let order: Vec<_> = matches.iter().map(|m| m.index).collect();
        assert_eq!(
            order,
            [8, 15, 14, 13, 12, 11, 10, 9, 4, 1, 2, 3, 6, 7, 0, 5]
        );
        assert!(matches.iter().all(|m| m.probability == 0.0625));
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let image = rows(&[&[1.0, 0.0]]);
        let text = rows(&[&[1.0, 0.0, 0.0]]);
        let error = rank(&image, &text, 1).unwrap_err();
        assert_eq!(error.image, [1, 2]);
        assert_eq!(error.text, [1, 3]);
        let two_images = rows(&[&[1.0, 0.0], &[0.0, 1.0]]);
        assert!(rank(&two_images, &rows(&[&[1.0, 0.0]]), 1).is_err());
    }

    #[test]
    fn sixteen_equal_candidates_print_as_python_does() {
        // 1/16 exactly: Python's '%.3f' % 0.0625 is '0.062' (ties to even on the exact value).
        let image = rows(&[&[1.0, 2.0]]);
        let text = Tensor::ones([16, 2], (Kind::Float, tch::Device::Cpu));
        let matches = rank(&image, &text, 1).unwrap();
        assert_eq!(matches[0].probability, 0.0625);
        assert_eq!(
            format_match("x", matches[0].probability, true),
            ", (x:0.062)"
        );
    }

    #[test]
    fn formatting_matches_python_percent_3f() {
        assert_eq!(format_match("a b", 0.5, false), ", a b");
        // Values from Python: f"{np.float32(p) * 100 / 100:.3f}".
        for (p, python) in [
            (0.0625f32, "0.062"),
            (0.1875, "0.188"),
            (0.3125, "0.312"),
            (0.6875, "0.688"),
            (0.9375, "0.938"),
            (0.0005, "0.001"),
            (0.0025, "0.002"),
            (1.0, "1.000"),
            (1e-9, "0.000"),
        ] {
            assert_eq!(
                format_match("Cedric Seaut (Keos Masons)", p, true),
                format!(", (Cedric Seaut (Keos Masons):{python})"),
                "p = {p}"
            );
        }
    }
}
