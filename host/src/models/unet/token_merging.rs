//! Token merging in the UNet's self-attention (ToMe for SD, the `tomesd` package that A1111
//! applies in `modules/sd_models.py: apply_token_merging`).
//!
//! A1111 patches with `ratio` and `use_rand=False, merge_attn=True, merge_crossattn=False,
//! merge_mlp=False`, leaving `tomesd`'s `max_downsample=1, sx=2, sy=2`. So only transformer
//! blocks at the latent's own resolution merge, only around self-attention, and each 2×2 cell
//! of the token grid gives its top-left token as a destination (no randomness):
//!
//! 1. the block's input tokens are split into destinations and sources;
//! 2. every source is matched to its most similar destination (cosine similarity of the
//!    input tokens), and the `⌊N·ratio⌋` best-matched sources are merged into their match
//!    (the mean of the destination and the sources merged into it);
//! 3. self-attention runs over the fewer tokens;
//! 4. its output is copied back to every token (a merged source takes its destination's).
//!
//! The order of the merged tokens differs from `tomesd`'s only where its sorts meet ties;
//! attention does not depend on the order of the tokens, so only the sums' rounding does (the
//! means too are a sum and a count here, not `scatter_reduce`).

use tch::{Device, Tensor};

/// Side of the grid cells that each give one destination token (`tomesd`'s `sx`, `sy`).
const STRIDE: i64 = 2;
/// Deepest level that merges, as a downsampling factor (`tomesd`'s `max_downsample`).
const MAX_DOWNSAMPLE: i64 = 1;

/// Token merging of one UNet call: the share of a first-level transformer's tokens merged
/// away in its self-attention (A1111's "Token merging ratio").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenMerging {
    ratio: f64,
}

impl TokenMerging {
    /// Merging at `ratio` (0–1); `None` for 0, which leaves the UNet as it is.
    pub fn new(ratio: f64) -> Option<Self> {
        (ratio > 0.0).then_some(Self { ratio })
    }

    /// The ratio.
    pub fn ratio(self) -> f64 {
        self.ratio
    }
}

/// Merging inside one UNet call: the settings and the latent's size (`tomesd`'s forward
/// pre-hook on the UNet records the input's height and width).
#[derive(Clone, Copy, Debug)]
pub(super) struct MergeScope {
    merging: TokenMerging,
    latent: (i64, i64),
}

impl MergeScope {
    /// The scope of a call on a latent of `height` × `width`.
    pub(super) fn new(merging: TokenMerging, (height, width): (i64, i64)) -> Self {
        Self {
            merging,
            latent: (height, width),
        }
    }

    /// The token grid of a transformer over `tokens` tokens, when it merges any.
    pub(super) fn grid(&self, tokens: i64) -> Option<TokenGrid> {
        let (height, width) = self.latent;
        let factor = downsampling(height * width, tokens);
        if factor > MAX_DOWNSAMPLE {
            return None;
        }
        // `tomesd` truncates: int(N · ratio).
        let removed = (tokens as f64 * self.merging.ratio) as i64;
        let grid = TokenGrid {
            height: ceil_div(height, factor),
            width: ceil_div(width, factor),
            removed,
        };
        // A grid one token high or wide has no full cell, so no destination (tomesd fails
        // there): nothing merges.
        let cells = (grid.height / STRIDE) * (grid.width / STRIDE);
        (removed > 0 && cells > 0).then_some(grid)
    }
}

/// How far a transformer's tokens are downsampled from the latent, as `tomesd` infers it
/// from the token count: ⌈√(latent tokens // tokens)⌉.
fn downsampling(latent_tokens: i64, tokens: i64) -> i64 {
    let ratio = latent_tokens / tokens.max(1);
    (ratio as f64).sqrt().ceil() as i64
}

fn ceil_div(side: i64, factor: i64) -> i64 {
    (side + factor - 1) / factor.max(1)
}

/// A transformer's tokens as a `height` × `width` grid, `removed` of them to merge away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TokenGrid {
    height: i64,
    width: i64,
    removed: i64,
}

impl TokenGrid {
    /// Matches the tokens of `metric` [B, N, C] (the block's input) and returns how to merge
    /// and unmerge them; `None` when the grid is not the tokens' (a caller's error upstream).
    pub(super) fn match_tokens(&self, metric: &Tensor) -> Option<Matching> {
        let (_, tokens, _) = metric.size3().ok()?;
        if tokens != self.height * self.width {
            return None;
        }
        let partition = Partition::top_left(self.height, self.width, metric.device());
        Some(Matching::new(metric, partition, self.removed))
    }
}

/// Token positions split into destinations (one per full 2×2 cell, its top-left token) and
/// sources (the rest), each in raster order.
struct Partition {
    sources: Tensor,
    destinations: Tensor,
    tokens: i64,
}

impl Partition {
    /// The split of a `height` × `width` grid with every cell's top-left token a
    /// destination; rows and columns past the last full cell are all sources.
    fn top_left(height: i64, width: i64, device: Device) -> Self {
        let (rows, cols) = (height / STRIDE * STRIDE, width / STRIDE * STRIDE);
        let (mut sources, mut destinations) = (Vec::new(), Vec::new());
        for y in 0..height {
            for x in 0..width {
                let position = y * width + x;
                if y < rows && x < cols && y % STRIDE == 0 && x % STRIDE == 0 {
                    destinations.push(position);
                } else {
                    sources.push(position);
                }
            }
        }
        Self {
            sources: Tensor::from_slice(&sources).to_device(device),
            destinations: Tensor::from_slice(&destinations).to_device(device),
            tokens: height * width,
        }
    }

    /// `x` [B, N, C]'s source and destination tokens.
    fn split(&self, x: &Tensor) -> (Tensor, Tensor) {
        (
            x.index_select(1, &self.sources),
            x.index_select(1, &self.destinations),
        )
    }
}

/// One block's bipartite soft matching (`tomesd`'s `bipartite_soft_matching_random2d`): which
/// sources stay, which merge, and into which destination.
pub(super) struct Matching {
    partition: Partition,
    /// Per image, the sources that stay [B, S − r] (indices into the sources).
    kept: Tensor,
    /// Per image, the sources merged away [B, r].
    merged: Tensor,
    /// Per image, the destination each merged source joins [B, r].
    targets: Tensor,
}

impl Matching {
    fn new(metric: &Tensor, partition: Partition, removed: i64) -> Self {
        let _guard = tch::no_grad_guard();
        let unit = metric / metric.norm_scalaropt_dim(2, [-1], true);
        let (sources, destinations) = partition.split(&unit);
        let scores = sources.matmul(&destinations.transpose(-1, -2));
        // At most every source merges.
        let removed = removed.min(sources.size()[1]);
        let (best, best_destination) = scores.max_dim(-1, false);
        let order = best.argsort(-1, true);
        let kept = order.narrow(-1, removed, order.size()[1] - removed);
        let merged = order.narrow(-1, 0, removed);
        let targets = best_destination.gather(-1, &merged, false);
        Self {
            partition,
            kept,
            merged,
            targets,
        }
    }

    /// `x` [B, N, C] with the merged sources averaged into their destinations: the kept
    /// sources, then the destinations [B, N − r, C].
    pub(super) fn merge(&self, x: &Tensor) -> Tensor {
        let (sources, destinations) = self.partition.split(x);
        let channels = x.size()[2];
        let kept = gather_rows(&sources, &self.kept, channels);
        let merged = gather_rows(&sources, &self.merged, channels);
        let destinations = mean_into(&destinations, &self.targets, &merged);
        Tensor::cat(&[kept, destinations], 1)
    }

    /// The tokens of a merged `x` [B, N − r, C] put back at their positions [B, N, C]; a
    /// merged source takes its destination's value.
    pub(super) fn unmerge(&self, x: &Tensor) -> Tensor {
        let (batch, _, channels) = x.size3().expect("merged tokens are [B, N, C]");
        let kept_count = self.kept.size()[1];
        let kept = x.narrow(1, 0, kept_count);
        let destinations = x.narrow(1, kept_count, x.size()[1] - kept_count);
        let merged = gather_rows(&destinations, &self.targets, channels);
        let sources = &self.partition.sources;
        let positions = Tensor::cat(
            &[
                self.partition
                    .destinations
                    .unsqueeze(0)
                    .expand([batch, -1], false),
                sources.take(&self.kept),
                sources.take(&self.merged),
            ],
            1,
        );
        let values = Tensor::cat(&[destinations, kept, merged], 1);
        Tensor::zeros(
            [batch, self.partition.tokens, channels],
            (x.kind(), x.device()),
        )
        .scatter(1, &expand_rows(&positions, channels), &values)
    }
}

/// `destinations` [B, D, C] with each row the mean of itself and the rows of `rows`
/// [B, K, C] that `targets` [B, K] send to it (`scatter_reduce(…, "mean")` with the row
/// included, which on CPUs is several times slower than a sum and a count).
fn mean_into(destinations: &Tensor, targets: &Tensor, rows: &Tensor) -> Tensor {
    let channels = rows.size()[2];
    let sums = destinations.scatter_add(1, &expand_rows(targets, channels), rows);
    let (batch, count) = (destinations.size()[0], destinations.size()[1]);
    let ones = Tensor::ones([batch, count], (sums.kind(), sums.device()));
    let counts = ones.scatter_add(1, targets, &targets.ones_like().to_kind(sums.kind()));
    sums / counts.unsqueeze(-1)
}

/// The rows `index` [B, K] of `x` [B, M, C]: [B, K, C].
fn gather_rows(x: &Tensor, index: &Tensor, channels: i64) -> Tensor {
    x.gather(1, &expand_rows(index, channels), false)
}

/// `index` [B, K] repeated over `channels`: [B, K, C].
fn expand_rows(index: &Tensor, channels: i64) -> Tensor {
    index.unsqueeze(-1).expand([-1, -1, channels], false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn scope(ratio: f64, latent: (i64, i64)) -> MergeScope {
        MergeScope::new(TokenMerging::new(ratio).expect("a ratio"), latent)
    }

    #[test]
    fn only_the_first_level_merges() {
        let scope = scope(0.5, (64, 64));
        assert_eq!(
            scope.grid(4096),
            Some(TokenGrid {
                height: 64,
                width: 64,
                removed: 2048
            })
        );
        assert_eq!(scope.grid(1024), None);
        assert_eq!(scope.grid(256), None);
        // Odd sides: the second level of a 13×9 latent has 7·5 tokens, downsampled by 2.
        let odd = self::scope(0.3, (13, 9));
        assert_eq!(odd.grid(117).map(|g| g.removed), Some(35));
        assert_eq!(odd.grid(35), None);
    }

    #[test]
    fn zero_ratio_is_no_merging() {
        assert_eq!(TokenMerging::new(0.0), None);
        assert_eq!(scope(0.001, (8, 8)).grid(64), None);
        // An 8-pixel-wide picture: no 2×2 cell, nothing to merge into.
        assert_eq!(scope(0.5, (64, 1)).grid(64), None);
    }

    #[test]
    fn destinations_are_each_cells_top_left() {
        let partition = Partition::top_left(3, 5, Device::Cpu);
        assert_eq!(
            Vec::<i64>::try_from(&partition.destinations).unwrap(),
            [0, 2]
        );
        assert_eq!(partition.sources.size(), [13]);
    }

    #[test]
    fn unmerge_after_merge_restores_unmerged_tokens() {
        let _guard = tch::no_grad_guard();
        let x = crate::rng::with_global_seed(3, || {
            Tensor::randn([2, 36, 8], (Kind::Float, Device::Cpu))
        });
        let grid = scope(0.5, (6, 6)).grid(36).expect("merges");
        let matching = grid.match_tokens(&x).expect("grid fits");
        let merged = matching.merge(&x);
        assert_eq!(merged.size(), [2, 18, 8]);
        let back = matching.unmerge(&merged);
        assert_eq!(back.size(), [2, 36, 8]);
        // Kept sources come back unchanged.
        let sources = matching.partition.sources.take(&matching.kept);
        let kept_back = back.gather(1, &expand_rows(&sources, 8), false);
        let kept_in = x.gather(1, &expand_rows(&sources, 8), false);
        assert!(kept_back.allclose(&kept_in, 0.0, 0.0, false));
        // A merged source takes its destination's merged value.
        let merged_positions = matching.partition.sources.take(&matching.merged);
        let target_positions = matching.partition.destinations.take(&matching.targets);
        let a = back.gather(1, &expand_rows(&merged_positions, 8), false);
        let b = back.gather(1, &expand_rows(&target_positions, 8), false);
        assert!(a.allclose(&b, 0.0, 0.0, false));
    }

    #[test]
    fn a_merged_destination_is_the_mean_of_its_tokens() {
        let _guard = tch::no_grad_guard();
        // Two identical tokens in one 2×2 cell, the other two far apart: with one token to
        // remove, the copy merges into the top-left token.
        let rows: Vec<f32> = vec![
            1.0, 0.0, 0.0, // top-left (destination)
            0.0, 1.0, 0.0, // top-right
            1.0, 0.1, 0.0, // bottom-left, closest to the destination
            0.0, 0.0, 1.0, // bottom-right
        ];
        let x = Tensor::from_slice(&rows).reshape([1, 4, 3]);
        let grid = scope(0.25, (2, 2)).grid(4).expect("merges one");
        let matching = grid.match_tokens(&x).expect("grid fits");
        let merged = matching.merge(&x);
        assert_eq!(merged.size(), [1, 3, 3]);
        let destination = merged.select(1, 2);
        let expected = Tensor::from_slice(&[1.0f32, 0.05, 0.0]).reshape([1, 3]);
        assert!(destination.allclose(&expected, 1e-6, 1e-6, false));
    }
}
