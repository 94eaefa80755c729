  // Lambda (q x q, lower triangular) from its free elements, as lme4's
  // Lambda@x = theta[Lind]: element e sits at [lam_row[e], lam_col[e]].
  // Shared by ml_lmm.stan and ml_glmm.stan (Jinja include).
  matrix relative_factor(int q, vector theta, array[] int lam_row, array[] int lam_col,
                         array[] int lam_par) {
    matrix[q, q] Lambda = rep_matrix(0, q, q);
    for (e in 1:size(lam_row)) {
      Lambda[lam_row[e], lam_col[e]] = theta[lam_par[e]];
    }
    return Lambda;
  }
