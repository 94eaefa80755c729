# Reference numbers for stanhier's exact aggregation of count data (tests/test_aggregate.py).
# Run from the repository root:  Rscript tests/reference/make_aggregation_reference.R
# Writes tests/data/cbpp.csv (lme4's cbpp) and tests/reference/aggregation_reference.json.
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
out <- list(meta = list(generated = format(Sys.time(), tz = "UTC", usetz = TRUE),
                        R_version = R.version.string, lme4 = as.character(packageVersion("lme4"))))
fit_info <- function(fit) list(logLik = as.numeric(logLik(fit)), fixef = as.list(fixef(fit)),
                               theta = unname(getME(fit, "theta")), nobs = nobs(fit),
                               se = unname(sqrt(diag(as.matrix(vcov(fit))))))
write.csv(cbpp, "tests/data/cbpp.csv", row.names = FALSE)
# cbpp as one 0/1 row per animal (842 rows): lme4 fits the rows, stanhier aggregates them
rows <- do.call(rbind, lapply(seq_len(nrow(cbpp)), function(i) {
  r <- cbpp[i, ]
  data.frame(herd = r$herd, period = r$period, y = c(rep(1, r$incidence), rep(0, r$size - r$incidence)))
}))
out$cbpp_bernoulli_rows <- c(list(call = "glmer(y ~ period + (1 | herd), rows, binomial)"),
                             fit_info(glmer(y ~ period + (1 | herd), rows, family = binomial)))
out$cbpp_binomial <- c(list(call = "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial)"),
                       fit_info(glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family = binomial)))
counts <- read.csv("tests/data/poisson_counts.csv")
out$poisson_counts <- c(list(call = "glmer(y ~ a + b + (1 | g), poisson_counts.csv, poisson)"),
                        fit_info(glmer(y ~ a + b + (1 | g), counts, family = poisson)))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "tests/reference/aggregation_reference.json")
