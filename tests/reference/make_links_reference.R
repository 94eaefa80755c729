# Reference numbers for non-default links (tests/test_links.py): lme4's glmer and one brms fit.
# Run from the repository root:  Rscript tests/reference/make_links_reference.R
# Writes tests/reference/links_reference.json.
suppressPackageStartupMessages({library(lme4); library(Matrix); library(jsonlite)})
out <- list(meta = list(generated = format(Sys.time(), tz = "UTC", usetz = TRUE),
                        R_version = R.version.string, lme4 = as.character(packageVersion("lme4"))))
# lme4's logLik (-devcomp dev / 2) takes log|H| from the PIRLS weights of the iteration before
# its last update (resp$updateWts() follows pwrssUpdate), and its PIRLS stops on the penalized
# deviance: at a non-canonical link (Fisher scoring converges linearly) that moves the value by
# up to ~3e-4 here. laplace_at_mode is the Laplace approximation at lme4's final mu with the
# PIRLS (Fisher) weights at that mu: -(log|I + A W A'| + |u|^2) / 2 + log p(y | mu), A = Lambda' Z'.
laplace_at_mode <- function(fit) {
  mu <- fitted(fit)
  fam <- family(fit)
  w <- weights(fit) * fam$mu.eta(fam$linkfun(mu))^2 / fam$variance(mu)
  A <- getME(fit, "Lambdat") %*% getME(fit, "Zt")
  H <- A %*% Diagonal(x = w) %*% t(A) + Diagonal(nrow(A))
  as.numeric(-0.5 * (determinant(H)$modulus + sum(getME(fit, "u")^2) + fit@resp$aic()))
}
fit_info <- function(fit) {
  vc <- as.data.frame(VarCorr(fit))
  list(logLik = as.numeric(logLik(fit)), laplace_at_mode = laplace_at_mode(fit), fixef = as.list(fixef(fit)),
       theta = unname(getME(fit, "theta")), sd = vc$sdcor[is.na(vc$var2) & vc$grp != "Residual"],
       se = unname(sqrt(diag(as.matrix(vcov(fit))))), nobs = nobs(fit),
       fitted_head = unname(head(fitted(fit), 5)))
}
cbpp <- read.csv("tests/data/cbpp.csv")
cbpp$period <- factor(cbpp$period)
fish <- read.csv("tests/data/fish.csv")
sleepstudy <- read.csv("tests/data/sleepstudy.csv")
sleepstudy$seconds <- sleepstudy$Reaction / 1000
# Families with a scale (below): lme4's PIRLS stops at tolPwrss = 1e-7, which leaves its objective noisy
# by ~1e-4 at these links and its optimizers stop short (convergence warnings). best_fit() runs PIRLS
# to 1e-10 and keeps the better of two optimizers: the optimum of the same objective without that noise.
best_fit <- function(...) {
  ctl <- list(glmerControl(optimizer = "nloptwrap", tolPwrss = 1e-10,
                           optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-12, maxeval = 1e5)),
              glmerControl(optimizer = "bobyqa", tolPwrss = 1e-10,
                           optCtrl = list(rhobeg = 2e-3, rhoend = 1e-10, maxfun = 1e5)))
  fits <- lapply(ctl, function(control) suppressWarnings(glmer(..., control = control)))
  fits[[which.max(sapply(fits, function(f) as.numeric(logLik(f))))]]
}
cases <- list(
  cbpp_probit = list(call = "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial(link = 'probit'))",
                     fit = glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family = binomial(link = "probit"))),
  cbpp_cloglog = list(call = "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial(link = 'cloglog'))",
                      fit = glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family = binomial(link = "cloglog"))),
  fish_poisson_sqrt = list(call = "glmer(fish_num ~ temperature + (1 | weather), fish, poisson(link = 'sqrt'))",
                           fit = glmer(fish_num ~ temperature + (1 | weather), fish, family = poisson(link = "sqrt"))),
  # crossed factors: stanhier's numpy evaluator (stanhier.ml.crossed_glmm) and its Stan program
  cbpp_probit_crossed = list(call = "glmer(cbind(incidence, size - incidence) ~ 1 + (1 | herd) + (1 | period), cbpp, binomial(link = 'probit'))",
                             fit = glmer(cbind(incidence, size - incidence) ~ 1 + (1 | herd) + (1 | period), cbpp, family = binomial(link = "probit"))),
  # families with a scale: lme4's objective is -2 logLik = ldL2 + |u|^2 + aic(y, mu, dev), R's family()$aic
  # with the dispersion dev / n profiled out (gaussian: n (log(2 pi RSS / n) + 1) + 2), u the mode of
  # dev + |u|^2 (see devcomp); sigma() = sqrt(pwrss / n)
  fish_gaussian_log = list(call = "glmer(fish_num + 1 ~ temperature + (1 | weather), fish, gaussian(link = 'log'))",
                           fit = glmer(fish_num + 1 ~ temperature + (1 | weather), fish, family = gaussian(link = "log"))),
  fish_gaussian_log_tight = list(call = "best_fit(fish_num + 1 ~ temperature + (1 | weather), fish, gaussian(link = 'log'))",
                                 fit = best_fit(fish_num + 1 ~ temperature + (1 | weather), fish, family = gaussian(link = "log"))),
  # Gamma on sleepstudy: log link (brms's default) and lme4's default inverse link (seconds = Reaction / 1000)
  sleepstudy_gamma_log = list(call = "best_fit(Reaction ~ Days + (1 | Subject), sleepstudy, Gamma(link = 'log'))",
                              fit = best_fit(Reaction ~ Days + (1 | Subject), sleepstudy, family = Gamma(link = "log"))),
  sleepstudy_gamma_inverse = list(call = "best_fit(seconds ~ Days + (1 | Subject), sleepstudy, Gamma)",
                                  fit = best_fit(seconds ~ Days + (1 | Subject), sleepstudy, family = Gamma)),
  sleepstudy_gamma_log_slope = list(call = "best_fit(Reaction ~ Days + (Days | Subject), sleepstudy, Gamma(link = 'log'))",
                                    fit = best_fit(Reaction ~ Days + (Days | Subject), sleepstudy, family = Gamma(link = "log")))
)
out$glmer <- lapply(cases, function(case) {
  info <- c(list(call = case$call), fit_info(case$fit))
  if (isTRUE(as.logical(getME(case$fit, "devcomp")$dims[["useSc"]]))) {
    info$sigma <- sigma(case$fit)
    info$devcomp <- as.list(getME(case$fit, "devcomp")$cmp)
  }
  info
})
# one brms fit: cbpp, binomial probit, brms's default priors
if (requireNamespace("brms", quietly = TRUE) && Sys.getenv("SKIP_BRMS") != "1") {
  suppressPackageStartupMessages(library(brms))
  rstan::rstan_options(boost_lib = "/usr/include")
  b <- brm(incidence | trials(size) ~ period + (1 | herd), data = cbpp, family = binomial(link = "probit"),
           chains = 4, iter = 2000, seed = 13, refresh = 0)
  s <- posterior_summary(b, variable = c("b_Intercept", "b_period2", "b_period3", "b_period4", "sd_herd__Intercept"))
  out$brms <- list(cbpp_probit = list(
    call = "brm(incidence | trials(size) ~ period + (1 | herd), cbpp, binomial(link = 'probit'), chains = 4, iter = 2000, seed = 13)",
    brms = as.character(packageVersion("brms")), mean = as.list(s[, "Estimate"]), sd = as.list(s[, "Est.Error"]),
    stancode_likelihood = grep("binomial|Phi", strsplit(stancode(b), "\n")[[1]], value = TRUE)))
}
if (is.null(out$brms) && file.exists("tests/reference/links_reference.json")) {  # SKIP_BRMS=1: keep the last one
  out$brms <- fromJSON("tests/reference/links_reference.json", simplifyVector = FALSE)$brms
}
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "tests/reference/links_reference.json")
