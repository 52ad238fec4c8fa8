//! scikit-image 0.26's `skimage.exposure.match_histograms` for one `uint8` channel
//! (`skimage/exposure/histogram_matching.py: _match_cumulative_cdf`), as A1111 calls it per Lab
//! channel with `channel_axis=2`.
//!
//! For unsigned input it counts values (`np.bincount`), takes each source value's cumulative
//! share of pixels and the template's at each value present, maps the former onto the latter with
//! `np.interp` in double precision, and stores the result into the `uint8` output, which
//! truncates toward zero.

/// `source` with its histogram matched to `template`'s. An empty `source` gives an empty
/// result; an empty `template` (where scikit-image raises) leaves `source` as it is.
pub fn match_histogram(source: &[u8], template: &[u8]) -> Vec<u8> {
    if source.is_empty() || template.is_empty() {
        return source.to_vec();
    }
    let src_counts = histogram(source);
    let tmpl_counts = histogram(template);
    let src_quantiles = cumulative_shares(src_counts.iter().copied(), source.len());
    // Only the template values that occur (`np.nonzero(tmpl_counts)`).
    let (tmpl_values, tmpl_present): (Vec<f64>, Vec<u64>) = tmpl_counts
        .iter()
        .enumerate()
        .filter(|&(_, &count)| count > 0)
        .map(|(value, &count)| (value as f64, count))
        .unzip();
    let tmpl_quantiles = cumulative_shares(tmpl_present.into_iter(), template.len());
    let lookup: Vec<u8> = src_quantiles
        .iter()
        .map(|&q| interp(q, &tmpl_quantiles, &tmpl_values) as u8)
        .collect();
    source.iter().map(|&v| lookup[usize::from(v)]).collect()
}

/// `match_histograms` for one float channel (`_match_cumulative_cdf`'s `np.unique` branch): each
/// distinct source value's cumulative share of the source, mapped by `np.interp` onto the
/// template's distinct values at their cumulative shares. Outpainting mk2 matches its shaped
/// noise to the picture's colours this way. Empty inputs leave `source` as it is.
pub fn match_histogram_f64(source: &[f64], template: &[f64]) -> Vec<f64> {
    if source.is_empty() || template.is_empty() {
        return source.to_vec();
    }
    let (src_values, src_counts) = unique_counts(source);
    let (tmpl_values, tmpl_counts) = unique_counts(template);
    let src_quantiles = cumulative_shares(src_counts.into_iter(), source.len());
    let tmpl_quantiles = cumulative_shares(tmpl_counts.into_iter(), template.len());
    let mapped: Vec<f64> = src_quantiles
        .iter()
        .map(|&q| interp(q, &tmpl_quantiles, &tmpl_values))
        .collect();
    source
        .iter()
        .map(|v| {
            let index = src_values.partition_point(|u| u.total_cmp(v).is_lt());
            mapped[index]
        })
        .collect()
}

/// `np.unique(values, return_counts=True)`: sorted distinct values and how often each occurs.
fn unique_counts(values: &[f64]) -> (Vec<f64>, Vec<u64>) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (mut distinct, mut counts): (Vec<f64>, Vec<u64>) = (Vec::new(), Vec::new());
    for v in sorted {
        match distinct.last() {
            Some(last) if last.total_cmp(&v).is_eq() => *counts.last_mut().unwrap() += 1,
            _ => {
                distinct.push(v);
                counts.push(1);
            }
        }
    }
    (distinct, counts)
}

fn histogram(values: &[u8]) -> [u64; 256] {
    let mut counts = [0u64; 256];
    values.iter().for_each(|&v| counts[usize::from(v)] += 1);
    counts
}

/// `np.cumsum(counts) / total`: each division in double precision.
fn cumulative_shares(counts: impl Iterator<Item = u64>, total: usize) -> Vec<f64> {
    let total = total as f64;
    counts
        .scan(0u64, |running, count| {
            *running += count;
            Some(*running as f64 / total)
        })
        .collect()
}

/// `np.interp(x, xp, fp)` for strictly increasing, non-empty `xp`: the end values outside,
/// `fp[j]` where `x` equals `xp[j]`, else `slope·(x − xp[j]) + fp[j]` evaluated as NumPy
/// does (no fused multiply-add, so the last bit matches before truncation).
fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let last = xp.len() - 1;
    if x < xp[0] {
        return fp[0];
    }
    if x >= xp[last] {
        return fp[last];
    }
    let j = xp.partition_point(|&v| v <= x) - 1;
    if xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    slope * (x - xp[j]) + fp[j]
}
