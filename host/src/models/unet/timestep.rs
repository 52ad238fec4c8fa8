//! Sinusoidal timestep embedding of the LDM UNet.

use tch::{Kind, Tensor};

/// `[cos(t·f_k), sin(t·f_k)]` with `f_k = exp(−ln(10000)·k/half)`, cos first (LDM order), fp32.
pub fn timestep_embedding(timesteps: &Tensor, dim: i64) -> Tensor {
    let half = dim / 2;
    let freqs = (Tensor::arange(half, (Kind::Float, timesteps.device()))
        * (-(10000f64.ln()) / half as f64))
        .exp();
    let args = timesteps.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    let emb = Tensor::cat(&[args.cos(), args.sin()], 1);
    if dim % 2 == 1 {
        emb.pad([0, 1], "constant", 0.0)
    } else {
        emb
    }
}
