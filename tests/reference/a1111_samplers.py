"""Python ports of A1111's own samplers (not in k-diffusion), written from A1111 v1.10's
`modules/sd_samplers_timesteps_impl.py` (DDIM, PLMS), `sd_samplers_lcm.py` (LCM) and
`sd_samplers_extra.py` (Restart), with the toy denoiser of samplers_reference.py as the model.

`run(name, toy, x0, start_noise, case, options, noise)` returns (result, tensors): the final
latent and what the Rust side needs to run the same job (x, sigmas, timesteps, alphas_cumprod).
"""

import numpy as np
import torch

import kdiffusion

sampling, external = kdiffusion.load()


def sd_alphas_cumprod():
    """SD1's ᾱ: scaled-linear betas in float64, stored as float32 (ldm register_schedule)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()


def a1111_timesteps(steps):
    """A1111's DDIM timesteps: every (1000 // steps)-th step from 1, clipped to 999."""
    return np.clip(np.arange(0, 1000, 1000 // steps) + 1, 0, 999)


def eps_model(toy, alphas):
    """ε(x_vp, t) of the toy denoiser, as the host computes it through k-diffusion scalings."""

    def model(x_vp, t):
        a = alphas[int(t)]
        sigma = ((1 - a) / a).sqrt()
        x_ve = x_vp / a.sqrt()
        denoised = toy(x_ve, sigma.reshape(1), float(t))
        return (x_ve - denoised) / sigma

    return model


def _descent_pairs(timesteps, alphas_cumprod):
    """(ᾱ now, ᾱ next) for each model call of A1111's DDIM-family loop: from the top of the
    given timesteps down to the second, each moving to the one below (the lowest goes to
    ᾱ[0]); ᾱ next in float64 as A1111 keeps it."""
    ts = [int(t) for t in timesteps]
    pairs = []
    for j in range(len(ts) - 1, 0, -1):
        below = ts[j - 1]
        pairs.append((ts[j], float(alphas_cumprod[ts[j]]), float(alphas_cumprod[below].double())))
    return pairs


def ddim(model, x, timesteps, alphas_cumprod, noise, eta):
    """DDIM with A1111's loop bounds; one noise draw per step even when η = 0."""
    for t, a_now, a_next in _descent_pairs(timesteps, alphas_cumprod):
        eps = model(x, t)
        a_now32 = torch.tensor(a_now, dtype=torch.float32)
        x0 = (x - torch.sqrt(1 - a_now32) * eps) / a_now32.sqrt()
        spread = eta * np.sqrt((1 - a_next) / (1 - a_now) * (1 - a_now / a_next))
        z = noise.next()
        x = np.sqrt(a_next) * x0 + np.sqrt(1.0 - a_next - spread ** 2) * eps + spread * z
    return x


def plms(model, x, timesteps, alphas_cumprod):
    """PLMS: improved-Euler start, then Adams–Bashforth of order 2, 3, 4 on ε."""
    history = []

    def move(x, eps, a_now, a_next):
        a_now32 = torch.tensor(a_now, dtype=torch.float32)
        x0 = (x - torch.sqrt(1 - a_now32) * eps) / a_now32.sqrt()
        return np.sqrt(a_next) * x0 + np.sqrt(1.0 - a_next) * eps

    pairs = _descent_pairs(timesteps, alphas_cumprod)
    ts = [int(t) for t in timesteps]
    for k, (t, a_now, a_next) in enumerate(pairs):
        eps = model(x, t)
        if not history:
            t_below = ts[max(len(ts) - 2 - k, 0)]
            eps_next = model(move(x, eps, a_now, a_next), t_below)
            blended = (eps + eps_next) / 2
        elif len(history) == 1:
            blended = (3 * eps - history[-1]) / 2
        elif len(history) == 2:
            blended = (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            blended = (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        x = move(x, blended, a_now, a_next)
        history = (history + [eps])[-3:]
    return x


def lcm_levels(alphas):
    """LCM's 50 levels (ᾱ at t = 19, 39, …, 999) as a k-diffusion DiscreteSchedule."""
    valid = torch.stack([alphas[999 - x * 20] for x in range(50)]).flip(0)
    return external.DiscreteSchedule(((1 - valid) / valid) ** 0.5, False)


def lcm(toy, x, sigmas, schedule, noise):
    def sigma_to_t(sigma):
        dists = sigma.log() - schedule.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape) * 20 + 19

    for i in range(len(sigmas) - 1):
        sigma = sigmas[i].reshape(1)
        t = sigma_to_t(sigma)
        standard = toy(x, sigma, float(t.item()))
        scaled = t.float() * 10.0
        c_skip = 0.25 / (scaled ** 2 + 0.25)
        c_out = scaled / (scaled ** 2 + 0.25) ** 0.5
        x = c_out * standard + c_skip * x
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise.next()
    return x


def restart_steps(sigmas):
    """The (σ, σ_next) pairs of A1111's Restart: for 20+ steps a shorter Karras schedule, with
    restart segments from the σ nearest 0.1 back up to the σ nearest 2 (9 steps once; for 36+
    steps n//4 steps twice)."""
    n = len(sigmas) - 1
    if n < 20:
        return list(zip(sigmas[:-1], sigmas[1:]))
    extra, repeats = (n // 4, 2) if n >= 36 else (9, 1)
    base = sampling.get_sigmas_karras(n - extra * repeats, sigmas[-2].item(), sigmas[0].item())
    nearest = lambda value: int((base - value).abs().argmin())  # noqa: E731
    low, high = nearest(0.1), nearest(2.0)
    pairs = []
    for i in range(len(base) - 1):
        pairs.append((base[i], base[i + 1]))
        if i + 1 == low and high < low:
            segment = sampling.get_sigmas_karras(extra + 1, base[low].item(), base[high].item())[:-1]
            pairs.extend(list(zip(segment[:-1], segment[1:])) * repeats)
    return pairs


def restart(toy, x, sigmas, noise, s_noise=1.0):
    """Heun steps over restart_steps(); re-noise whenever a step starts above the last σ."""
    reached = None
    for high, low in restart_steps(sigmas):
        if reached is not None and reached < high:
            x = x + noise.next() * s_noise * (high ** 2 - reached ** 2) ** 0.5
        slope = sampling.to_d(x, high, toy(x, high.reshape(1)))
        if low == 0:
            x = x + slope * (low - high)
        else:
            x_end = x + slope * (low - high)
            slope_end = sampling.to_d(x_end, low, toy(x_end, low.reshape(1)))
            x = x + (slope + slope_end) / 2 * (low - high)
        reached = low
    return x


def run(name, toy, x0, start_noise, case, options, noise):
    steps = case["steps"]
    alphas = sd_alphas_cumprod()
    out = {"alphas_cumprod": alphas.double()}
    if name in ("DDIM", "PLMS", "UniPC"):
        t_enc = case["t_enc"]
        timesteps = a1111_timesteps(steps)
        ts_sched = torch.tensor(timesteps[:t_enc])
        a = alphas[timesteps[t_enc]]
        x = a.sqrt() * x0 + (1 - a).sqrt() * start_noise
        model = eps_model(toy, alphas)
        descent = torch.tensor(timesteps[: t_enc + 1][::-1].copy(), dtype=torch.float64)
        if name == "DDIM":
            result = ddim(model, x, ts_sched, alphas, noise, options.get("eta", 0.0))
        elif name == "PLMS":
            result = plms(model, x, ts_sched, alphas)
        else:
            result = unipc(toy, x / a.sqrt(), [float(t) for t in descent], alphas,
                           options.get("variant", "bh1"), int(options.get("order", 3)),
                           bool(options.get("lower_order_final", 1)))
        out["timesteps"] = descent
        out["sigmas"] = torch.stack([((1 - alphas[int(t)]) / alphas[int(t)]).sqrt() for t in descent]).double()
        out["x"] = x / a.sqrt()
        return result, out
    if name == "LCM":
        schedule = lcm_levels(alphas)
        t = torch.linspace(schedule.sigma_to_t(schedule.sigmas[-1]).item(), schedule.sigma_to_t(schedule.sigmas[0]).item(), steps)
        full = sampling.append_zero(schedule.t_to_sigma(t))
        sigmas = full[case.get("start", 0):]
    else:
        sigmas = sampling.get_sigmas_karras(steps, 0.0291675, 14.614642)[case.get("start", 0):]
    x = x0 + start_noise * sigmas[0]
    if name == "LCM":
        result = lcm(toy, x.clone(), sigmas, schedule, noise)
    elif name == "Restart":
        result = restart(toy, x.clone(), sigmas, noise, options.get("s_noise", 1.0))
    else:
        raise ValueError(f"no reference for sampler {name}")
    out["sigmas"] = sigmas.double()
    out["x"] = x
    return result, out


class UniPcSchedule:
    """The VP schedule of UniPC's 'discrete' mode: log α = ½·ln ᾱ_i at t_i = (i+1)/N, linear
    in between and beyond the ends."""

    def __init__(self, alphas):
        self.log_alpha = [0.5 * float(a) for a in torch.log(alphas.double())]
        self.n = len(self.log_alpha)

    def la(self, t):
        i = min(max(int(np.floor(t * self.n - 1)), 0), self.n - 2)
        x0, x1 = (i + 1) / self.n, (i + 2) / self.n
        y0, y1 = self.log_alpha[i], self.log_alpha[i + 1]
        return y0 + (t - x0) * (y1 - y0) / (x1 - x0)

    def alpha(self, t):
        return np.exp(self.la(t))

    def std(self, t):
        return np.sqrt(1 - np.exp(2 * self.la(t)))

    def lam(self, t):
        return self.la(t) - 0.5 * np.log(1 - np.exp(2 * self.la(t)))


def unipc(toy, x, descent, alphas, variant="bh1", order=3, lower_order_final=True):
    """UniPC multistep, data prediction, B(h) variants, time-uniform steps (A1111's use)."""
    ns = UniPcSchedule(alphas)
    steps = len(descent) - 1
    x = x * alphas[int(descent[0])].sqrt()
    if steps == 0:
        return x
    order = min(order, steps)
    t_0, t_T = 1.0 / ns.n, descent[1] / 1000 + 1 / 1000
    ts = [t_T + (t_0 - t_T) * i / steps for i in range(steps + 1)]

    def model(x, t):
        a, s = ns.alpha(t), ns.std(t)
        return toy(x / a, torch.tensor([s / a]), (t - 1.0 / ns.n) * 1000.0)

    def update(x, models, times, t, order, use_corrector):
        t0, m0 = times[-1], models[-1]
        h = ns.lam(t) - ns.lam(t0)
        rks, d1s = [], []
        for i in range(1, order):
            rk = (ns.lam(times[-(i + 1)]) - ns.lam(t0)) / h
            rks.append(rk)
            d1s.append((models[-(i + 1)] - m0) / rk)
        rks.append(1.0)
        hh = -h
        h_phi_1 = np.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if variant == "bh1" else np.expm1(hh)
        R, b, fact = [], [], 1
        for i in range(1, order + 1):
            R.append([rk ** (i - 1) for rk in rks])
            b.append(h_phi_k * fact / b_h)
            fact *= i + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        R, b = np.array(R), np.array(b)
        a_t = ns.alpha(t)
        base = ns.std(t) / ns.std(t0) * x - a_t * h_phi_1 * m0
        x_t = base
        if d1s:
            rhos_p = [0.5] if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
            x_t = base - a_t * b_h * sum(r * d for r, d in zip(rhos_p, d1s))
        if not use_corrector:
            return x_t, None
        rhos_c = [0.5] if order == 1 else np.linalg.solve(R, b)
        m_t = model(x_t, t)
        corr = sum(r * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0
        return base - a_t * b_h * (corr + rhos_c[-1] * (m_t - m0)), m_t

    models, times = [model(x, ts[0])], [ts[0]]
    for k in range(1, order):
        x, m = update(x, models, times, ts[k], k, True)
        models.append(m if m is not None else model(x, ts[k]))
        times.append(ts[k])
    for step in range(order, steps + 1):
        step_order = min(order, steps + 1 - step) if lower_order_final else order
        x, m = update(x, models, times, ts[step], step_order, step != steps)
        models, times = models[1:], times[1:] + [ts[step]]
        if step < steps:
            models.append(m if m is not None else model(x, ts[step]))
    return x
