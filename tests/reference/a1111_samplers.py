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


def ddim(model, x, timesteps, alphas_cumprod, noise, eta):
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    sigmas = eta * np.sqrt((1 - alphas_prev.numpy()) / (1 - alphas) * (1 - alphas / alphas_prev.numpy()))
    s_in = x.new_ones([x.shape[0]]).reshape(-1, 1, 1, 1)
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item())
        a_t = alphas[index].item() * s_in
        a_prev = alphas_prev[index].item() * s_in
        sigma_t = sigmas[index].item() * s_in
        sqrt_one_minus_at = sqrt_one_minus_alphas[index].item() * s_in
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t ** 2).sqrt() * e_t
        x = a_prev.sqrt() * pred_x0 + dir_xt + sigma_t * noise.next()
    return x


def plms(model, x, timesteps, alphas_cumprod):
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    s_in = x.new_ones([x.shape[0]]).reshape(-1, 1, 1, 1)
    old_eps = []

    def step(x, e_t, index):
        a_t = alphas[index].item() * s_in
        a_prev = alphas_prev[index].item() * s_in
        sqrt_one_minus_at = sqrt_one_minus_alphas[index].item() * s_in
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        t_next = timesteps[max(index - 1, 0)].item()
        e_t = model(x, timesteps[index].item())
        if len(old_eps) == 0:
            x_prev = step(x, e_t, index)
            e_prime = (e_t + model(x_prev, t_next)) / 2
        elif len(old_eps) == 1:
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x_new = step(x, e_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        x = x_new
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


def restart(toy, x, sigmas, noise, s_noise=1.0):
    """A1111's restart_sampler with its automatic restart list."""

    def heun_step(x, old_sigma, new_sigma):
        denoised = toy(x, old_sigma.reshape(1))
        d = sampling.to_d(x, old_sigma, denoised)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            return x + d * dt
        x_2 = x + d * dt
        d_2 = sampling.to_d(x_2, new_sigma, toy(x_2, new_sigma.reshape(1)))
        return x + (d + d_2) / 2 * dt

    steps = sigmas.shape[0] - 1
    restart_list = {}
    if steps >= 20:
        restart_steps, restart_times = 9, 1
        if steps >= 36:
            restart_steps, restart_times = steps // 4, 2
        sigmas = sampling.get_sigmas_karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item())
        restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    restart_list = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    step_list = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restart_list:
            restart_steps, restart_times, restart_max = restart_list[i + 1]
            min_idx = i + 1
            max_idx = int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                sigma_restart = sampling.get_sigmas_karras(restart_steps, sigmas[min_idx].item(), sigmas[max_idx].item())[:-1]
                while restart_times > 0:
                    restart_times -= 1
                    step_list.extend(zip(sigma_restart[:-1], sigma_restart[1:]))
    last_sigma = None
    for old_sigma, new_sigma in step_list:
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + noise.next() * s_noise * (old_sigma ** 2 - last_sigma ** 2) ** 0.5
        x = heun_step(x, old_sigma, new_sigma)
        last_sigma = new_sigma
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
