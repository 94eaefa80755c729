// Linear mixed model, exact marginal (restricted) log-likelihood -- stanhier `lmer`.
//
//   y = X * beta + Z * b + e,   b ~ N(0, sigma^2 * Lambda * Lambda'),   e ~ N(0, sigma^2 * I)
//
// The random effects b are integrated out analytically, so the parameters are only
// the fixed effects `beta`, the free elements `theta` of the relative covariance
// factor Lambda (lme4's theta) and log(sigma). Every parameter is unconstrained
// (the sign of a diagonal element of Lambda does not change Lambda * Lambda'), so
// optimizers see the same function with or without a Jacobian, and the value of
// `target` at the optimum IS the log-likelihood with all constants (the REML
// log-likelihood when REML == 1), as lme4 reports it.
//
// The data are cross-products computed once: the cost of one gradient does not
// depend on the number of observations. The random effects come in G independent
// blocks of size q (the structure decides the layout, the data only sizes it):
//   * one grouping factor, e.g. (Days | Subject): one block per level of the
//     factor, q = number of coefficients of its term(s);
//   * several grouping factors, crossed or nested, e.g. (1 | plate) + (1 | sample):
//     a single stacked block holding every random effect (q = total count).
functions {
{% include "ml_relative_factor.stan" %}

  // Cholesky factor of one block's A = I + Lambda' Z'Z Lambda
  matrix block_cholesky(matrix ZtZ_g, matrix Lambda, int lambda_diagonal) {
    if (lambda_diagonal) {
      // cheaper O(q^2) product when Lambda is diagonal (scalar terms and `||` terms)
      vector[rows(Lambda)] lambda = diagonal(Lambda);
      return cholesky_decompose(add_diag(diag_post_multiply(diag_pre_multiply(lambda, ZtZ_g), lambda), 1));
    }
    return cholesky_decompose(add_diag(quad_form_sym(ZtZ_g, Lambda), 1));
  }

  // Marginal log density of y (REML == 0) or the REML log-likelihood (REML == 1),
  // from cross-products. With V = sigma^2 * (I + Z Lambda Lambda' Z') and, per block,
  // A = I + Lambda' Z'Z Lambda, u = Lambda' Z'(y - X beta):
  //   log|V|        = N log sigma^2 + sum_blocks log|A|
  //   r' V^-1 r     = (r'r - sum_blocks u' A^-1 u) / sigma^2
  //   REML adds     log|X' V^-1 X| = log|X'X - sum_blocks (Lambda' Z'X)' A^-1 (Lambda' Z'X)| - K log sigma^2
  real marginal_gaussian_lpdf(real yty, vector Xty, matrix XtX, array[] matrix ZtZ,
                              array[] matrix ZtX, array[] vector Zty, int N, int REML,
                              vector beta, matrix Lambda, int lambda_diagonal, real sigma) {
    int G = size(ZtZ);
    int q = rows(Lambda);
    int K = rows(beta);
    real quad = yty - 2 * dot_product(beta, Xty) + quad_form(XtX, beta);  // r'r
    real log_det_A = 0;
    matrix[K, K] XtVX = XtX;  // X' (I + Z Lambda Lambda' Z')^-1 X, for REML
    for (g in 1:G) {
      matrix[q, q] L_A = block_cholesky(ZtZ[g], Lambda, lambda_diagonal);
      vector[q] c = mdivide_left_tri_low(L_A, Lambda' * (Zty[g] - ZtX[g] * beta));
      quad -= dot_self(c);
      log_det_A += 2 * sum(log(diagonal(L_A)));
      if (REML) {
        XtVX -= crossprod(mdivide_left_tri_low(L_A, Lambda' * ZtX[g]));
      }
    }
    real n_eff = REML ? N - K : N;
    real lp = -0.5 * (n_eff * log(2 * pi() * square(sigma)) + log_det_A + quad / square(sigma));
    if (REML) {
      lp -= 0.5 * log_determinant_spd(XtVX);
    }
    return lp;
  }
}
data {
  int<lower=1> N;                      // observations
  int<lower=1> K;                      // columns of the fixed-effects design X
  int<lower=0, upper=1> REML;          // 1: REML criterion, 0: maximum likelihood
  // fixed part: whole-data cross-products
  matrix[K, K] XtX;
  vector[K] Xty;
  real yty;
  // random part: G independent blocks of q random effects each
  int<lower=1> G;
  int<lower=1> q;
  array[G] matrix[q, q] ZtZ;
  array[G] matrix[q, K] ZtX;
  array[G] vector[q] Zty;
  // relative covariance factor: which theta goes where (one entry per nonzero)
  int<lower=1> n_theta;
  int<lower=1> n_lam;
  array[n_lam] int<lower=1, upper=q> lam_row;
  array[n_lam] int<lower=1, upper=q> lam_col;
  array[n_lam] int<lower=1, upper=n_theta> lam_par;
  int<lower=0, upper=1> lambda_diagonal;  // 1 if every nonzero is on the diagonal
}
parameters {
  vector[K] beta;                      // fixed effects (population-level part of the formula)
  vector[n_theta] theta;               // free elements of Lambda, term by term (lme4's theta)
  real log_sigma;                      // log residual standard deviation
}
transformed parameters {
  real sigma = exp(log_sigma);
}
model {
  matrix[q, q] Lambda = relative_factor(q, theta, lam_row, lam_col, lam_par);
  target += marginal_gaussian_lpdf(yty | Xty, XtX, ZtZ, ZtX, Zty, N, REML, beta, Lambda,
                                   lambda_diagonal, sigma);
}
generated quantities {
  // What lmer's results need at the optimum, computed by the same block algebra as the
  // likelihood (generated quantities are not evaluated by log_prob: free for the optimizer).
  // With W = L_A^-1 Lambda' (L_A L_A' = A) and r = Z'y - Z'X beta, per block:
  array[G] vector[q] b;                // conditional modes of the random effects: W' W r
  array[G] matrix[q, q] b_cov;         // their conditional covariances: sigma^2 W' W
  matrix[K, K] XtVX = XtX;             // X' (I + Z Lambda Lambda' Z')^-1 X; vcov(beta) = sigma^2 XtVX^-1
  {
    matrix[q, q] Lambda = relative_factor(q, theta, lam_row, lam_col, lam_par);
    for (g in 1:G) {
      matrix[q, q] W = mdivide_left_tri_low(block_cholesky(ZtZ[g], Lambda, lambda_diagonal), Lambda');
      b[g] = W' * (W * (Zty[g] - ZtX[g] * beta));
      b_cov[g] = square(sigma) * crossprod(W);
      XtVX -= crossprod(W * ZtX[g]);
    }
  }
}
