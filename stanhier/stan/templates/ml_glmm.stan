// Generalized linear mixed model, marginal log-likelihood by Laplace approximation
// (n_agq == 1) or adaptive Gauss-Hermite quadrature (n_agq > 1, one scalar random
// effect per group) -- stanhier `glmer`, as lme4's glmer(nAGQ = n_agq).
//
//   eta = X * beta + Z * Lambda * u,   u ~ N(0, I),   y_i ~ family(eta_i)
//
// The spherical random effects u are integrated out block by block: Newton
// iterations find the mode u_hat of log p(y | u) + log N(u | 0, I) inside the
// program, then the integral is approximated at the mode. Parameters: fixed effects
// `beta`, the free elements `theta` of the relative covariance factor Lambda
// (lme4's theta; unconstrained because the sign of a diagonal element does not
// change Lambda * Lambda'), and log(shape) for the negative binomial. Every
// parameter is unconstrained and the likelihood keeps its constants, so `target`
// at the optimum IS the (approximate) marginal log-likelihood.
// Families with a scale parameter ({% for f in scale_families %}{{ f.name }}{{ ", " if not loop.last }}{% endfor %}) take lme4's objective, where the
// scale is profiled out: the modes maximize the log-likelihood at scale 1 (-deviance / 2),
// and -2 target = log|H| + |u|^2 + aic(y, mu, deviance), R's family()$aic at the modes'
// means with the dispersion deviance / N (lme4's glmResp::Laplace; its logLik).
//
// The family is data ({% for f in families %}{{ f.glmm_code }} {{ f.name }}{{ ", " if not loop.last }}{% endfor %}),
// and so is the link ({% for l in links %}{{ l.code }} {{ l.name }}{{ ", " if not loop.last }}{% endfor %}), so one
// compiled program serves every family and link; each family's branch below is the Stan
// text its module in stanhier/families/ holds, each link's the text of stanhier/families/links.py.
// At a family's default link its own expressions are used; at another link the generic
// ones, with lme4's PIRLS weights (d E[y] / d eta)^2 / Var[y] (the Fisher information) as
// the curvature of the Laplace approximation, as lme4 does.
// Layout: observations are sorted by block; a block is one level of the grouping
// factor when all terms share one factor, else one stacked block with every
// random effect (crossed or nested factors).
functions {
{% include "ml_relative_factor.stan" %}

  // the inverse link mu = g^-1(eta)
  vector inv_link(vector eta, int link) {
{% for l in links %}
    if (link == {{ l.code }}) {  // {{ l.name }}
      return {{ l.stan_inverse("eta") }};
    }
{% endfor %}
    reject("inv_link: unknown link code ", link);
  }

  // d mu / d eta
  vector mu_eta(vector eta, int link) {
{% for l in links %}
    if (link == {{ l.code }}) {  // {{ l.name }}
      return {{ l.stan_mu_eta.format(x="eta") }};
    }
{% endfor %}
    reject("mu_eta: unknown link code ", link);
  }

  // score d log p / d eta (column 1) and Fisher weight (d E[y] / d eta)^2 / Var[y] (column 2)
  // for E[y] = trials .* mu and Var[y] = v; 0 where Var[y] = 0 (a saturated mean: no information)
  // or where mu is not finite (an inverse link at its pole: the log-likelihood is -inf there)
  matrix glm_working(vector y_real, array[] int trials, vector eta, vector mu, vector v, int link) {
    int n = rows(eta);
    vector[n] dmean = to_vector(trials) .* mu_eta(eta, link);
    matrix[n, 2] d = rep_matrix(0, n, 2);
    for (i in 1:n) {
      if (v[i] > 0 && !is_inf(v[i]) && !is_inf(mu[i]) && !is_nan(mu[i])) {
        real ratio = dmean[i] / v[i];
        d[i, 1] = (y_real[i] - trials[i] * mu[i]) * ratio;
        d[i, 2] = dmean[i] * ratio;
      }
    }
    return d;
  }

  // log p(y | eta) with all normalizing constants (-inf where mu leaves the family's range)
  real glm_lpmf(array[] int y, vector y_real, array[] int trials, vector eta, int family, int link, real phi) {
{% for f in families %}
    if (family == {{ f.glmm_code }}) {  // {{ f.name }}
      if (link == {{ f.link_object.code }}) {
        return {{ f.glmm_lpmf }};
      }
      vector[rows(eta)] mu = inv_link(eta, link);
      if ({{ f.stan_mean_outside("mu") }}) {
        return negative_infinity();
      }
      return {{ f.glmm_lpmf_mu }};
    }
{% endfor %}
    reject("glm_lpmf: unknown family code ", family);
  }

  // R's family()$aic for the families with a scale parameter, at the means mu (unit weights):
  // the dispersion is profiled out inside it (lme4's Laplace objective adds it to log|H| + |u|^2)
  real scale_family_aic(vector y_real, vector mu, int family) {
    int n = rows(mu);
{% for f in scale_families %}
    if (family == {{ f.glmm_code }}) {  // {{ f.name }}
      if ({{ f.stan_mean_outside("mu") }}) {
        return positive_infinity();
      }
      real dev = {{ f.glmm_deviance }};
      return {{ f.glmm_aic }};
    }
{% endfor %}
    reject("scale_family_aic: family code without a scale parameter ", family);
  }

  // d log p / d eta (column 1) and the curvature weight (column 2) per observation:
  // -d^2 log p / d eta^2 at the default link, the Fisher weight at any other (lme4's)
  matrix glm_derivatives(array[] int y, vector y_real, array[] int trials, vector eta, int family, int link,
                         real phi) {
    int n = rows(eta);
    matrix[n, 2] d;
{% for f in families %}
    if (family == {{ f.glmm_code }}) {  // {{ f.name }}
      if (link == {{ f.link_object.code }}) {
{% for line in f.glmm_derivatives.splitlines() %}
        {{ line }}
{% endfor %}
      } else {
        vector[n] mu = inv_link(eta, link);
        d = glm_working(y_real, trials, eta, mu, {{ f.glmm_variance }}, link);
      }
    }
{% endfor %}
    return d;
  }

  // Cholesky factor of the curvature H = I + ZL' diag(w) ZL (w: -d^2 log p / d eta^2)
  matrix curvature_cholesky(vector w, matrix ZL) {
    return cholesky_decompose(add_diag(crossprod(diag_pre_multiply(sqrt(w), ZL)), 1));
  }

  // Mode u_hat of one block's spherical random effects, where ZL = Z_block * Lambda:
  // damped Newton from u = 0 on h(u) = log p(y | eta_fixed + ZL * u) - u'u / 2 (concave
  // for these families at their default links; Fisher scoring with step halving at others). Returns [u_hat; h(u_hat)].
  vector block_mode(array[] int y, vector y_real, array[] int trials, vector eta_fixed, matrix ZL, int family,
                    int link, real phi, real tol, int max_iter) {
    int n = rows(ZL);
    int q = cols(ZL);
    vector[q] u = rep_vector(0, q);
    real h = glm_lpmf(y | y_real, trials, eta_fixed, family, link, phi);  // log p(y|u) + log N(u|0,I) up to -q/2 log(2 pi)
    for (iter in 1:max_iter) {
      matrix[n, 2] d = glm_derivatives(y, y_real, trials, eta_fixed + ZL * u, family, link, phi);
      vector[q] grad = ZL' * d[:, 1] - u;
      matrix[q, q] L_H = curvature_cholesky(d[:, 2], ZL);
      vector[q] step = mdivide_right_tri_low(mdivide_left_tri_low(L_H, grad)', L_H)';
      real t = 1;
      vector[q] u_new = u + step;
      real h_new = glm_lpmf(y | y_real, trials, eta_fixed + ZL * u_new, family, link, phi) - 0.5 * dot_self(u_new);
      while (!(h_new >= h - 1e-12 * abs(h)) && t > 1e-6) {  // step halving
        t *= 0.5;
        u_new = u + t * step;
        h_new = glm_lpmf(y | y_real, trials, eta_fixed + ZL * u_new, family, link, phi) - 0.5 * dot_self(u_new);
      }
      u = u_new;
      h = h_new;
      if (max(abs(t * step)) < tol) {
        break;
      }
    }
    return append_row(u, h);
  }

  // Cholesky factor of the curvature H = I + (Z Lambda)' W (Z Lambda) at u
  matrix block_curvature(array[] int y, vector y_real, array[] int trials, vector eta_fixed, matrix ZL,
                         int family, int link, real phi, vector u) {
    return curvature_cholesky(col(glm_derivatives(y, y_real, trials, eta_fixed + ZL * u, family, link, phi), 2), ZL);
  }

  // Log of the integral over one block's random effects:
  //   log integral p(y | eta_fixed + ZL * u) N(u | 0, I) du
  // at the mode (block_mode): Laplace (n_agq == 1) or adaptive Gauss-Hermite.
  real marginal_block_lpmf(array[] int y, vector y_real, array[] int trials, vector eta_fixed, matrix ZL,
                           int family, int link, real phi, int n_agq, vector gh_x, vector gh_logw,
                           real tol, int max_iter) {
    int q = cols(ZL);
    vector[q + 1] mode = block_mode(y, y_real, trials, eta_fixed, ZL, family, link, phi, tol, max_iter);
    vector[q] u = mode[1:q];
    real h = mode[q + 1];
    matrix[q, q] L_H = block_curvature(y, y_real, trials, eta_fixed, ZL, family, link, phi, u);
    if (n_agq == 1) {
      // Laplace: h(u_hat) - 1/2 log|H| (the (2 pi)^(q/2) factors cancel)
      return h - sum(log(diagonal(L_H)));
    }
    // adaptive Gauss-Hermite (q == 1): nodes centred at the mode, scaled by 1/sqrt(H)
    real s = sqrt2() / L_H[1, 1];
    vector[n_agq] terms;
    for (k in 1:n_agq) {
      real u_k = u[1] + s * gh_x[k];
      terms[k] = gh_logw[k] + square(gh_x[k])
                 + glm_lpmf(y | y_real, trials, eta_fixed + ZL[:, 1] * u_k, family, link, phi) - 0.5 * square(u_k);
    }
    return log(s) - 0.5 * log(2 * pi()) + log_sum_exp(terms);
  }
}
data {
  int<lower=1> N;                       // observations (sorted by block)
  int<lower=1> K;                       // columns of the fixed-effects design X
  int<lower=1, upper={{ families | map(attribute="glmm_code") | max }}> family;         // {% for f in families %}{{ f.glmm_code }} {{ f.name }}{{ ", " if not loop.last }}{% endfor %}

  int<lower=1, upper={{ links | map(attribute="code") | max }}> link;           // {% for l in links %}{{ l.code }} {{ l.name }}{{ ", " if not loop.last }}{% endfor %}

  array[N] int<lower=0> y;              // the response of the discrete families (0 otherwise)
  vector[N] y_real;                     // the response as reals (every family)
  array[N] int<lower=0> trials;         // binomial trials (unused otherwise)
  matrix[N, K] X;
  // random part: G independent blocks of q random effects each
  int<lower=1> G;
  int<lower=1> q;
  matrix[N, q] Zb;                      // each observation's row of Z within its block
  array[G] int<lower=1> block_start;    // first observation of each block
  array[G] int<lower=1> block_size;     // number of observations of each block
  // relative covariance factor: which theta goes where (one entry per nonzero)
  int<lower=1> n_theta;
  int<lower=1> n_lam;
  array[n_lam] int<lower=1, upper=q> lam_row;
  array[n_lam] int<lower=1, upper=q> lam_col;
  array[n_lam] int<lower=1, upper=n_theta> lam_par;
  // integration
  int<lower=1> n_agq;                   // 1: Laplace; > 1: Gauss-Hermite nodes (needs q == 1)
  vector[n_agq] gh_x;                   // Gauss-Hermite nodes
  vector[n_agq] gh_logw;                // log weights
  real<lower=0> newton_tol;
  int<lower=1> newton_max_iter;
}
parameters {
  vector[K] beta;                       // fixed effects (population-level part of the formula)
  vector[n_theta] theta;                // free elements of Lambda, term by term (lme4's theta)
  vector[{{ phi_condition }} ? 1 : 0] log_shape;  // log of {{ phi_names }} (phi)
}
model {
  matrix[q, q] Lambda = relative_factor(q, theta, lam_row, lam_col, lam_par);
  real phi = {{ phi_condition }} ? exp(log_shape[1]) : 1;
  vector[N] eta_fixed = X * beta;
  matrix[N, q] ZL = Zb * Lambda;
  if ({{ scale_condition }}) {
    // lme4's objective with the scale profiled out: -(log|H| + |u|^2 + aic(y, mu)) / 2 (n_agq == 1)
    vector[N] mu_hat;
    real penalty = 0;
    for (g in 1:G) {
      int s = block_start[g];
      int e = s + block_size[g] - 1;
      vector[q + 1] mode = block_mode(y[s:e], y_real[s:e], trials[s:e], eta_fixed[s:e], ZL[s:e, :], family,
                                      link, 1, newton_tol, newton_max_iter);
      vector[q] u = mode[1:q];
      matrix[q, q] L_H = block_curvature(y[s:e], y_real[s:e], trials[s:e], eta_fixed[s:e], ZL[s:e, :],
                                         family, link, 1, u);
      penalty += dot_self(u) + 2 * sum(log(diagonal(L_H)));
      mu_hat[s:e] = inv_link(eta_fixed[s:e] + ZL[s:e, :] * u, link);
    }
    target += -0.5 * (penalty + scale_family_aic(y_real, mu_hat, family));
  } else {
    for (g in 1:G) {
      int s = block_start[g];
      int e = s + block_size[g] - 1;
      target += marginal_block_lpmf(y[s:e] | y_real[s:e], trials[s:e], eta_fixed[s:e], ZL[s:e, :], family,
                                    link, phi, n_agq, gh_x, gh_logw, newton_tol, newton_max_iter);
    }
  }
}
generated quantities {
  // What glmer's results need at the optimum, from the same Newton solver as the likelihood
  // (generated quantities are not evaluated by log_prob: free for the optimizer).
  array[G] vector[q] b;                 // conditional modes of the random effects: Lambda * u_hat
  array[G] matrix[q, q] b_cov;          // their conditional covariances: Lambda H^-1 Lambda'
  real ussq = 0;                        // |u_hat|^2 (lme4's devcomp ussq: the residual SD of scale families)
  {
    matrix[q, q] Lambda = relative_factor(q, theta, lam_row, lam_col, lam_par);
    real phi = {{ phi_condition }} ? exp(log_shape[1]) : 1;
    vector[N] eta_fixed = X * beta;
    matrix[N, q] ZL = Zb * Lambda;
    for (g in 1:G) {
      int s = block_start[g];
      int e = s + block_size[g] - 1;
      vector[q + 1] mode = block_mode(y[s:e], y_real[s:e], trials[s:e], eta_fixed[s:e], ZL[s:e, :], family,
                                      link, phi, newton_tol, newton_max_iter);
      vector[q] u = mode[1:q];
      matrix[q, q] W = mdivide_left_tri_low(
          block_curvature(y[s:e], y_real[s:e], trials[s:e], eta_fixed[s:e], ZL[s:e, :], family, link, phi, u),
          Lambda');
      b[g] = Lambda * u;
      ussq += dot_self(u);
      b_cov[g] = crossprod(W);
    }
  }
}
