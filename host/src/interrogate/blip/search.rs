//! Choosing a caption's tokens: greedy search as A1111 v1.10.1 runs it (transformers 4.30.2's
//! `generate` for `blip_decoder.generate(sample=False, num_beams=1, …)`), and beam search as
//! BLIP meant it (transformers' `BeamSearchScorer` of the 4.x versions BLIP was written
//! against). In A1111 any `num_beams > 1` fails (the image embeddings are expanded twice,
//! issue #13450) and the whole result is `<error>`; sdhost runs the intended search instead.
//!
//! Both count `min_length` and `max_length` in tokens with the 4 prompt tokens, and always run
//! at least one step, even when `max_length` ≤ 4.

use super::vocab::SEP;
use crate::models::blip::{BlipTextDecoder, DecoderCache};
use tch::{Kind, Tensor};

/// Lengths of a search, in tokens with the prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lengths {
    /// While shorter than this, `[SEP]` cannot be chosen (`MinLengthLogitsProcessor`).
    pub min: usize,
    /// The search stops once a sequence is this long (`MaxLengthCriteria`).
    pub max: usize,
}

/// Log-probabilities or logits [B, V] in fp32 of the last fed tokens.
fn last_logits(decoder: &BlipTextDecoder, ids: &Tensor, cache: &mut DecoderCache) -> Tensor {
    let hidden = decoder.forward(ids, cache);
    let last = hidden.select(1, hidden.size()[1] - 1);
    decoder.logits(&last).to_kind(Kind::Float)
}

/// `[SEP]` barred in every row of `scores` [B, V] while `len < min`.
fn bar_end(scores: &Tensor, len: usize, lengths: Lengths) {
    if len < lengths.min {
        let _ = scores.narrow(1, SEP, 1).fill_(f64::NEG_INFINITY);
    }
}

fn ids_tensor(ids: &[i64], rows: i64, device: tch::Device) -> Tensor {
    Tensor::from_slice(ids)
        .reshape([rows, -1])
        .to_device(device)
}

/// Greedy search from `prefix` over `image_embeds` [1, N, W]: the highest logit each step (the
/// first on ties), `[SEP]` included as the last id when chosen.
pub fn greedy(
    decoder: &BlipTextDecoder,
    image_embeds: &Tensor,
    prefix: &[i64],
    lengths: Lengths,
) -> Vec<i64> {
    let device = image_embeds.device();
    let mut cache = decoder.cache(image_embeds);
    let mut ids = prefix.to_vec();
    let mut fed = ids_tensor(&ids, 1, device);
    loop {
        let z = last_logits(decoder, &fed, &mut cache);
        bar_end(&z, ids.len(), lengths);
        let token = z.argmax(-1, false).int64_value(&[0]);
        ids.push(token);
        if token == SEP || ids.len() >= lengths.max {
            return ids;
        }
        fed = ids_tensor(&[token], 1, device);
    }
}

/// The finished hypotheses of a beam search (`BeamHypotheses`): at most `n`, scored by their
/// summed log-probability over their length with the prompt and without `[SEP]`.
struct Finished {
    n: usize,
    hyps: Vec<(f64, Vec<i64>)>,
    worst: f64,
}

impl Finished {
    fn new(n: usize) -> Self {
        Self {
            n,
            hyps: Vec::new(),
            worst: 1e9,
        }
    }

    fn add(&mut self, hyp: Vec<i64>, sum_logprobs: f64) {
        let score = sum_logprobs / hyp.len() as f64;
        if self.hyps.len() < self.n || score > self.worst {
            self.hyps.push((score, hyp));
            if self.hyps.len() > self.n {
                // Drop the lowest (the earliest among equals), the next lowest is the new worst.
                let mut order: Vec<usize> = (0..self.hyps.len()).collect();
                order.sort_by(|&a, &b| self.hyps[a].0.total_cmp(&self.hyps[b].0).then(a.cmp(&b)));
                self.worst = self.hyps[order[1]].0;
                self.hyps.remove(order[0]);
            } else {
                self.worst = self.worst.min(score);
            }
        }
    }

    /// Whether no running beam can beat the worst kept hypothesis (the heuristic of early
    /// stopping off: the best candidate score over the current length).
    fn is_done(&self, best_sum_logprobs: f64, cur_len: usize) -> bool {
        self.hyps.len() >= self.n && self.worst >= best_sum_logprobs / cur_len as f64
    }

    /// The best hypothesis (the last kept among equal scores, as `sorted(...).pop()`).
    fn best(self) -> Vec<i64> {
        let mut best: Option<(f64, Vec<i64>)> = None;
        for (score, hyp) in self.hyps {
            if best.as_ref().is_none_or(|(b, _)| score >= *b) {
                best = Some((score, hyp));
            }
        }
        best.map(|(_, h)| h).unwrap_or_default()
    }
}

/// Beam search with `beams` beams from `prefix` over `image_embeds` [1, N, W]: each step the
/// top 2·beams of beams × vocabulary by summed log-probability; a candidate ending in `[SEP]`
/// among the top `beams` becomes a finished hypothesis, the others continue; stop when the
/// finished ones cannot be beaten or at `max`, where the running beams are added. Returns the
/// best hypothesis without its `[SEP]`.
pub fn beam_search(
    decoder: &BlipTextDecoder,
    image_embeds: &Tensor,
    prefix: &[i64],
    beams: usize,
    lengths: Lengths,
) -> Vec<i64> {
    let device = image_embeds.device();
    let n = beams as i64;
    let mut cache = decoder.cache(image_embeds);
    let first = last_logits(decoder, &ids_tensor(prefix, 1, device), &mut cache);
    // All beams start as the prompt; only the first counts until they diverge.
    cache.select(&Tensor::zeros([n], (Kind::Int64, device)));
    let mut logp = first.log_softmax(-1, Kind::Float).repeat([n, 1]);
    let mut running: Vec<Vec<i64>> = vec![prefix.to_vec(); beams];
    let mut scores: Vec<f32> = (0..beams)
        .map(|b| if b == 0 { 0.0 } else { -1e9 })
        .collect();
    let mut finished = Finished::new(beams);
    let vocab = logp.size()[1];
    loop {
        let cur_len = running[0].len();
        bar_end(&logp, cur_len, lengths);
        let total =
            (&logp + Tensor::from_slice(&scores).to_device(device).unsqueeze(1)).reshape([-1]);
        let (top_scores, top_ids) = total.topk(2 * n, -1, true, true);
        let top_scores =
            Vec::<f32>::try_from(top_scores.to_device(tch::Device::Cpu)).expect("fp32 scores");
        let top_ids =
            Vec::<i64>::try_from(top_ids.to_device(tch::Device::Cpu)).expect("int64 indices");
        let (mut next, mut next_scores, mut rows, mut tokens) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (rank, (&score, &index)) in top_scores.iter().zip(&top_ids).enumerate() {
            let (beam, token) = ((index / vocab) as usize, index % vocab);
            if token == SEP {
                if rank < beams {
                    finished.add(running[beam].clone(), f64::from(score));
                }
            } else {
                let mut ids = running[beam].clone();
                ids.push(token);
                next.push(ids);
                next_scores.push(score);
                rows.push(beam as i64);
                tokens.push(token);
            }
            if next.len() == beams {
                break;
            }
        }
        let best = top_scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let done = finished.is_done(f64::from(best), cur_len);
        running = next;
        scores = next_scores;
        if done {
            return finished.best();
        }
        if running[0].len() >= lengths.max {
            for (ids, score) in running.into_iter().zip(scores) {
                finished.add(ids, f64::from(score));
            }
            return finished.best();
        }
        cache.select(&Tensor::from_slice(&rows).to_device(device));
        let z = last_logits(decoder, &ids_tensor(&tokens, n, device), &mut cache);
        logp = z.log_softmax(-1, Kind::Float);
    }
}

#[cfg(test)]
mod tests {
    use super::Finished;

    #[test]
    fn finished_hypotheses_keep_the_best_n_by_length_normalised_score() {
        let mut f = Finished::new(2);
        f.add(vec![1, 2], -2.0); // −1.0
        f.add(vec![1, 2, 3, 4], -2.0); // −0.5
        assert_eq!(f.worst, -1.0);
        f.add(vec![5], -0.9); // −0.9 replaces −1.0
        assert_eq!(f.worst, -0.9);
        f.add(vec![6], -5.0); // below the worst: not kept
        assert_eq!(f.hyps.len(), 2);
        // Done when the worst kept (−0.9) is at least the best running score over the length.
        assert!(!f.is_done(-4.0, 5));
        assert!(f.is_done(-5.0, 5));
        assert_eq!(f.best(), vec![1, 2, 3, 4]);
    }
}
