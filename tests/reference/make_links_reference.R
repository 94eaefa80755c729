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
  # not fitted by stanhier's glmer (its error says so): lme4's objective for families with a scale is
  # -2 logLik = ldL2 + |u|^2 + n (log(2 pi RSS / n) + 1) + 2, with u the mode of RSS + |u|^2 (see devcomp)
  fish_gaussian_log = list(call = "glmer(fish_num + 1 ~ temperature + (1 | weather), fish, gaussian(link = 'log'))",
                           fit = glmer(fish_num + 1 ~ temperature + (1 | weather), fish, family = gaussian(link = "log")))
)
out$glmer <- lapply(cases, function(case) {
  info <- c(list(call = case$call), fit_info(case$fit))
  if (isTRUE(getME(case$fit, "devcomp")$dims[["useSc"]])) {
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
