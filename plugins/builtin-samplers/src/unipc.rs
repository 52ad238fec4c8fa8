//! UniPC (Zhao et al. 2023) as A1111 runs it (`modules/models/diffusion/uni_pc`): multistep
//! predictor–corrector in data-prediction form on the model's VP schedule, with the
//! discrete ᾱ interpolated piecewise linearly in log α over continuous time t ∈ [1/N, 1].
//!
//! img2img layout (see `timesteps.rs`): the latent is noised to `ts[t_enc]`, and A1111 starts
//! the solver at continuous time (ts[t_enc−1] + 1)/1000, one DDIM step lower, running
//! t_enc steps to t = 1/N. The result is the VP latent there, which A1111 decodes.

use sdhost_plugin_api::{Context, Latent, SampleError, SampleResult, SamplerSpec};

/// The model's VP schedule in continuous time (UniPC's `NoiseScheduleVP('discrete')`).
struct Schedule {
    /// 0.5·ln ᾱ_i at t_i = (i + 1)/N.
    log_alpha: Vec<f64>,
}

impl Schedule {
    fn n(&self) -> f64 {
        self.log_alpha.len() as f64
    }

    /// log α(t): piecewise linear through (t_i, log α_i), extended linearly past the ends.
    fn log_alpha(&self, t: f64) -> f64 {
        let n = self.log_alpha.len();
        let position = t * self.n() - 1.0; // fractional index i of t_i = (i + 1)/N
        let i = (position.floor().max(0.0) as usize).min(n - 2);
        let (x0, x1) = ((i + 1) as f64 / self.n(), (i + 2) as f64 / self.n());
        let (y0, y1) = (self.log_alpha[i], self.log_alpha[i + 1]);
        y0 + (t - x0) * (y1 - y0) / (x1 - x0)
    }

    fn alpha(&self, t: f64) -> f64 {
        self.log_alpha(t).exp()
    }

    fn std(&self, t: f64) -> f64 {
        (1.0 - (2.0 * self.log_alpha(t)).exp()).sqrt()
    }

    fn lambda(&self, t: f64) -> f64 {
        let log_alpha = self.log_alpha(t);
        log_alpha - 0.5 * (1.0 - (2.0 * log_alpha).exp()).ln()
    }
}

/// Solves the small dense system `a·x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>, SampleError> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        if a[pivot][col].abs() < 1e-300 {
            return Err(SampleError::BadInput(
                "UniPC: singular system (repeated time steps)".into(),
            ));
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot_row[col];
            for (value, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *value -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Ok(x)
}

/// The solver state of one run.
struct UniPc<'c, 'a> {
    context: &'c Context<'a>,
    schedule: Schedule,
    bh2: bool,
    step: usize,
}

impl<'c, 'a> UniPc<'c, 'a> {
    /// The data prediction x0(x, t) through the host's denoiser at model time (t − 1/N)·1000.
    fn model(&self, x: &Latent<'c, 'a>, t: f64) -> SampleResult<'c, 'a> {
        let alpha = self.schedule.alpha(t);
        let sigma = self.schedule.std(t) / alpha;
        let model_time = (t - 1.0 / self.schedule.n()) * 1000.0;
        self.context.denoise_at(&(x / alpha), sigma, model_time)
    }

    /// One multistep update of the B(h) variants to time `t` from the last `order` points.
    fn update(
        &mut self,
        x: &Latent<'c, 'a>,
        models: &[Latent<'c, 'a>],
        times: &[f64],
        t: f64,
        order: usize,
        use_corrector: bool,
    ) -> Result<(Latent<'c, 'a>, Option<Latent<'c, 'a>>), SampleError> {
        let ns = &self.schedule;
        let last = models.len() - 1;
        let (t_prev_0, model_prev_0) = (times[last], &models[last]);
        let lambda_prev_0 = ns.lambda(t_prev_0);
        let h = ns.lambda(t) - lambda_prev_0;
        let (sigma_prev_0, sigma_t, alpha_t) = (ns.std(t_prev_0), ns.std(t), ns.alpha(t));

        let mut rks = Vec::new();
        let mut d1s = Vec::new();
        for i in 1..order {
            let rk = (ns.lambda(times[last - i]) - lambda_prev_0) / h;
            rks.push(rk);
            d1s.push(models[last - i].mix(1.0 / rk, model_prev_0, -1.0 / rk));
        }
        rks.push(1.0);

        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let b_h = if self.bh2 { hh.exp_m1() } else { hh };
        let mut r = Vec::new();
        let mut b = Vec::new();
        let mut factorial = 1.0;
        for i in 1..=order {
            r.push(
                rks.iter()
                    .map(|rk| rk.powi(i as i32 - 1))
                    .collect::<Vec<_>>(),
            );
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }

        let base = x.mix(sigma_t / sigma_prev_0, model_prev_0, -alpha_t * h_phi_1);
        let x_t = if d1s.is_empty() {
            base.clone()
        } else {
            let rhos_p = if order == 2 {
                vec![0.5]
            } else {
                let sub: Vec<Vec<f64>> = r[..order - 1]
                    .iter()
                    .map(|row| row[..order - 1].to_vec())
                    .collect();
                solve(sub, b[..order - 1].to_vec())?
            };
            let mut terms = vec![(1.0, &base)];
            terms.extend(
                rhos_p
                    .iter()
                    .map(|rho| -alpha_t * b_h * rho)
                    .zip(d1s.iter()),
            );
            Latent::combine(self.context, &terms)
        };
        if !use_corrector {
            return Ok((x_t, None));
        }
        let rhos_c = if order == 1 { vec![0.5] } else { solve(r, b)? };
        let model_t = self.model(&x_t, t)?;
        let c_last = -alpha_t * b_h * rhos_c[order - 1];
        let mut terms = vec![(1.0, &base), (c_last, &model_t), (-c_last, model_prev_0)];
        terms.extend(
            rhos_c[..order - 1]
                .iter()
                .map(|rho| -alpha_t * b_h * rho)
                .zip(d1s.iter()),
        );
        let corrected = Latent::combine(self.context, &terms);
        Ok((corrected, Some(model_t)))
    }

    fn report(&mut self, x: &Latent<'c, 'a>, model_x: &Latent<'c, 'a>) -> Result<(), SampleError> {
        self.context.callback(self.step, 0.0, 0.0, x, model_x)?;
        self.step += 1;
        Ok(())
    }
}

/// How A1111 presents "UniPC" (its row of the sampler table).
pub fn unipc_spec() -> SamplerSpec {
    SamplerSpec::new("UniPC")
        .alias("unipc")
        .timestep_input()
        // A1111's `uni_pc_variant`, `uni_pc_skip_type`, `uni_pc_order` and
        // `uni_pc_lower_order_final` settings.
        .text_option("variant", "bh1", "B(h) variant: bh1 or bh2")
        .text_option(
            "skip_type",
            "time_uniform",
            "time spacing: time_uniform or time_quadratic",
        )
        .option("order", 3.0, "solver order (at most the number of steps)")
        .option(
            "lower_order_final",
            1.0,
            "lower the order on the final steps (1 = on)",
        )
}

/// UniPC with A1111's options: variant bh1/bh2, skip type time_uniform/time_quadratic/logSNR,
/// order (3), lower order final step (on).
pub fn unipc<'c, 'a>(context: &'c Context<'a>, x: Latent<'c, 'a>) -> SampleResult<'c, 'a> {
    let variant = context.text("variant")?;
    let bh2 = match variant.as_str() {
        "bh1" => false,
        "bh2" => true,
        other => {
            return Err(SampleError::BadOption(format!(
                "UniPC variant must be bh1 or bh2, got {other}"
            )))
        }
    };
    let skip_type = context.text("skip_type")?;
    let lower_order_final = context.number("lower_order_final")? != 0.0;
    let descent = context.timesteps();
    let alphas = context.alphas_cumprod();
    if descent.is_empty() || alphas.len() < 2 {
        return Err(SampleError::BadInput(
            "UniPC needs the model's timesteps".into(),
        ));
    }
    let noised_alpha = alphas[descent[0] as usize];
    let mut x = &x * noised_alpha.sqrt();
    let steps = descent.len() - 1;
    if steps == 0 {
        return Ok(x);
    }
    let order = (context.number("order")?.max(1.0) as usize).min(steps);
    let schedule = Schedule {
        log_alpha: alphas.iter().map(|a| 0.5 * a.ln()).collect(),
    };
    let t_end = 1.0 / schedule.n();
    let t_start = descent[1] / 1000.0 + 1.0 / 1000.0;
    let times: Vec<f64> = match skip_type.as_str() {
        "time_uniform" => (0..=steps)
            .map(|i| t_start + (t_end - t_start) * i as f64 / steps as f64)
            .collect(),
        "time_quadratic" => (0..=steps)
            .map(|i| {
                let (a, b) = (t_start.sqrt(), t_end.sqrt());
                (a + (b - a) * i as f64 / steps as f64).powi(2)
            })
            .collect(),
        other => {
            return Err(SampleError::BadOption(format!(
                "UniPC skip type must be time_uniform or time_quadratic, got {other}"
            )))
        }
    };
    context.set_total_steps(steps as u32);
    let mut solver = UniPc {
        context,
        schedule,
        bh2,
        step: 0,
    };
    let mut models = vec![solver.model(&x, times[0])?];
    let mut prev_times = vec![times[0]];
    for (init_order, &t) in times.iter().enumerate().take(order).skip(1) {
        let (next, model_x) = solver.update(&x, &models, &prev_times, t, init_order, true)?;
        x = next;
        let model_x = match model_x {
            Some(m) => m,
            None => solver.model(&x, t)?,
        };
        solver.report(&x, &model_x)?;
        models.push(model_x);
        prev_times.push(t);
    }
    for (step, &t) in times.iter().enumerate().skip(order) {
        let step_order = if lower_order_final {
            order.min(steps + 1 - step)
        } else {
            order
        };
        let use_corrector = step != steps;
        let (next, model_x) =
            solver.update(&x, &models, &prev_times, t, step_order, use_corrector)?;
        x = next;
        match &model_x {
            Some(m) => solver.report(&x, m)?,
            None => solver.report(&x, &x.clone())?,
        }
        models.remove(0);
        prev_times.remove(0);
        prev_times.push(t);
        if step < steps {
            let model_x = match model_x {
                Some(m) => m,
                None => solver.model(&x, t)?,
            };
            models.push(model_x);
        } else {
            // The final model value is not needed; keep the list length for symmetry.
            models.push(x.clone());
        }
    }
    Ok(x)
}
