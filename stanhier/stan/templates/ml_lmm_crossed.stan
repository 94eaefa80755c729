// Linear mixed model with crossed or nested grouping factors: exact marginal
// (restricted) log-likelihood in a blocked layout -- stanhier `lmer` beyond the stacked
// layout of ml_lmm.stan (same model, same parameters, same value of `target`).
//
//   y = X * beta + Z * b + e,   b ~ N(0, sigma^2 * Lambda * Lambda'),   e ~ N(0, sigma^2 * I)
//
// The random effects are ordered as lme4 orders its terms (most levels first). With
// A = I + Lambda' Z'Z Lambda split by (first term | the rest):
//   * A11 is block-diagonal: one M1 x M1 block per level of the first grouping factor,
//     A11_j = I + Lambda1' (Z1'Z1)_j Lambda1, factored level by level;
//   * the rest is the dense Schur complement
//       S = I + Lambda2' W Lambda2,   W = Z2'Z2 - sum_j T_j' Lambda1 A11_j^-1 Lambda1' T_j,
//     where T_j (rows of Z1'Z2 of level j) touches only the columns level j meets (CSR-like
//     data t_ptr / t_col / t_val), so building W follows the sparsity of Z'Z;
//   * log|A| = sum_j log|A11_j| + log|S|, and for any right-hand side R = Z'[r, X]
//     R' Lambda A^-1 Lambda' R = sum_j C1_j' C1_j + C2' C2 (blocked forward substitution).
// Then, with r = y - X beta (as in ml_lmm.stan):
//   log|V|     = N log sigma^2 + log|A|
//   r' V^-1 r  = (r'r - r'Z Lambda A^-1 Lambda' Z'r) / sigma^2
//   REML adds  log|X'X - X'Z Lambda A^-1 Lambda' Z'X| and uses N - K for sigma's term.
// stanhier's optimizer profiles beta and sigma out of this function (numpy, same blocks,
// stanhier/ml/crossed.py); a test checks both give the same value at the optimum.
functions {
  // Lambda (q x q, lower triangular) from its free elements, as lme4's Lambda@x = theta[Lind].
  matrix relative_factor(int q, vector theta, array[] int lam_row, array[] int lam_col,
                         array[] int lam_par) {
    matrix[q, q] Lambda = rep_matrix(0, q, q);
    for (e in 1:size(lam_row)) {
      Lambda[lam_row[e], lam_col[e]] = theta[lam_par[e]];
    }
    return Lambda;
  }

  // The diagonal of a diagonal Lambda (scalar and `||` terms) without a dense q x q matrix.
  vector relative_diagonal(int q, vector theta, array[] int lam_row, array[] int lam_par) {
    vector[q] lambda = rep_vector(0, q);
    for (e in 1:size(lam_row)) {
      lambda[lam_row[e]] = theta[lam_par[e]];
    }
    return lambda;
  }

  real blocked_gaussian_lpdf(real yty, vector Xty, matrix XtX, array[] matrix ZtZ1,
                             array[] vector Zty1, array[] matrix ZtX1, vector Zty2, matrix ZtX2,
                             matrix Z22, array[] int t_ptr, array[] int t_col, matrix t_val,
                             int N, int REML, vector beta, vector theta, matrix Lambda1,
                             array[] int lam2_row, array[] int lam2_col, array[] int lam2_par,
                             int lambda2_diagonal, real sigma) {
    int L1 = size(ZtZ1);
    int M1 = rows(Lambda1);
    int q2 = rows(Z22);
    int K = rows(beta);
    matrix[q2, q2] W = Z22;                                   // -> Z2'Z2 - T' P T
    matrix[q2, K + 1] G2 = append_col(Zty2 - ZtX2 * beta, ZtX2);  // -> Z2'R - T' P Z1'R
    matrix[K + 1, K + 1] Q = rep_matrix(0, K + 1, K + 1);     // R' Z Lambda A^-1 Lambda' Z' R
    real log_det_A = 0;
    for (j in 1:L1) {
      matrix[M1, M1] L_A = cholesky_decompose(add_diag(quad_form(ZtZ1[j], Lambda1), 1));
      matrix[M1, K + 1] C1 = mdivide_left_tri_low(L_A, Lambda1' * append_col(Zty1[j] - ZtX1[j] * beta,
                                                                             ZtX1[j]));
      matrix[M1, M1] H = mdivide_left_tri_low(L_A, Lambda1');  // H'H = Lambda1 A11_j^-1 Lambda1'
      log_det_A += 2 * sum(log(diagonal(L_A)));
      Q += crossprod(C1);
      if (t_ptr[j + 1] > t_ptr[j]) {
        array[t_ptr[j + 1] - t_ptr[j]] int cols = t_col[t_ptr[j]:(t_ptr[j + 1] - 1)];
        matrix[M1, t_ptr[j + 1] - t_ptr[j]] HT = H * t_val[t_ptr[j]:(t_ptr[j + 1] - 1)]';
        W[cols, cols] = W[cols, cols] - crossprod(HT);
        G2[cols, :] = G2[cols, :] - HT' * C1;
      }
    }
    matrix[q2, q2] S;
    matrix[q2, K + 1] R2;
    if (lambda2_diagonal) {
      vector[q2] lambda2 = relative_diagonal(q2, theta, lam2_row, lam2_par);
      S = add_diag(diag_post_multiply(diag_pre_multiply(lambda2, W), lambda2), 1);
      R2 = diag_pre_multiply(lambda2, G2);
    } else {
      matrix[q2, q2] Lambda2 = relative_factor(q2, theta, lam2_row, lam2_col, lam2_par);
      S = add_diag(quad_form(W, Lambda2), 1);
      S = 0.5 * (S + S');
      R2 = Lambda2' * G2;
    }
    matrix[q2, q2] L_S = cholesky_decompose(S);
    log_det_A += 2 * sum(log(diagonal(L_S)));
    Q += crossprod(mdivide_left_tri_low(L_S, R2));
    real quad = yty - 2 * dot_product(beta, Xty) + quad_form(XtX, beta) - Q[1, 1];  // r' (I + Z Lambda Lambda' Z')^-1 r
    real n_eff = REML ? N - K : N;
    real lp = -0.5 * (n_eff * log(2 * pi() * square(sigma)) + log_det_A + quad / square(sigma));
    if (REML) {
      lp -= 0.5 * log_determinant_spd(XtX - Q[2:(K + 1), 2:(K + 1)]);
    }
    return lp;
  }
}
data {
  int<lower=1> N;                      // observations
  int<lower=1> K;                      // columns of the fixed-effects design X
  int<lower=0, upper=1> REML;          // 1: REML criterion, 0: maximum likelihood
  matrix[K, K] XtX;
  vector[K] Xty;
  real yty;
  // first term (most levels): L1 levels, M1 coefficients per level, block-diagonal
  int<lower=1> L1;
  int<lower=1> M1;
  array[L1] matrix[M1, M1] ZtZ1;       // per-level blocks of Z1'Z1
  array[L1] vector[M1] Zty1;
  array[L1] matrix[M1, K] ZtX1;
  // every other term: q2 random effects in the dense Schur complement
  int<lower=1> q2;
  vector[q2] Zty2;
  matrix[q2, K] ZtX2;
  // T = Z1'Z2 grouped by level of the first factor: level j owns entries t_ptr[j]..t_ptr[j+1]-1
  int<lower=0> n_t;
  array[L1 + 1] int<lower=1> t_ptr;
  array[n_t] int<lower=1, upper=q2> t_col;
  matrix[n_t, M1] t_val;
  // Z2'Z2 in compressed sparse row form (Stan's csr_* convention)
  int<lower=1> n_z22;
  vector[n_z22] z22_w;
  array[n_z22] int<lower=1, upper=q2> z22_v;
  array[q2 + 1] int<lower=1> z22_u;
  // relative covariance factor: which theta goes where
  int<lower=1> n_theta;
  int<lower=1> n_lam1;                 // first term's M1 x M1 factor (shared by its levels)
  array[n_lam1] int<lower=1, upper=M1> lam1_row;
  array[n_lam1] int<lower=1, upper=M1> lam1_col;
  array[n_lam1] int<lower=1, upper=n_theta> lam1_par;
  int<lower=1> n_lam2;                 // the rest, one entry per nonzero of the q2 x q2 factor
  array[n_lam2] int<lower=1, upper=q2> lam2_row;
  array[n_lam2] int<lower=1, upper=q2> lam2_col;
  array[n_lam2] int<lower=1, upper=n_theta> lam2_par;
  int<lower=0, upper=1> lambda2_diagonal;
}
transformed data {
  matrix[q2, q2] Z22 = csr_to_dense_matrix(q2, q2, z22_w, z22_v, z22_u);
}
parameters {
  vector[K] beta;                      // fixed effects
  vector[n_theta] theta;               // free elements of Lambda, term by term (lme4's theta)
  real log_sigma;                      // log residual standard deviation
}
transformed parameters {
  real sigma = exp(log_sigma);
}
model {
  matrix[M1, M1] Lambda1 = relative_factor(M1, theta, lam1_row, lam1_col, lam1_par);
  target += blocked_gaussian_lpdf(yty | Xty, XtX, ZtZ1, Zty1, ZtX1, Zty2, ZtX2, Z22, t_ptr, t_col,
                                  t_val, N, REML, beta, theta, Lambda1, lam2_row, lam2_col, lam2_par,
                                  lambda2_diagonal, sigma);
}
