# lme4's parametric-bootstrap intervals (confint(m, method = "boot"), boot.type = "perc") for
# sleepstudy, with many simulations so that their Monte Carlo error is small next to that of
# the nsim = 200 run tests/test_confint.py makes; and boot's percentile interpolation
# (boot:::norm.inter) on fixed values. Run from the repository root:
#   Rscript tests/reference/lme4_confint_boot.R   (writes tests/reference/lme4_confint_boot_sleepstudy.json)
suppressMessages(library(lme4))
nsim <- as.integer(Sys.getenv("NSIM", "4000"))
sleepstudy <- read.csv("tests/data/sleepstudy.csv")
ml <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = FALSE)
t0 <- proc.time()
x <- suppressMessages(suppressWarnings(confint(ml, method = "boot", nsim = nsim, seed = 1, oldNames = FALSE)))
print(x); print(proc.time() - t0)
# boot.ci(type = "perc")'s interpolation: t drawn once, intervals at several levels and sizes
set.seed(2)
t <- round(rnorm(199, 10, 3), 6)
perc <- lapply(list(c(199, 0.95), c(199, 0.9), c(39, 0.95), c(50, 0.8), c(10, 0.95)), function(a) {
  tt <- t[seq_len(a[1])]
  list(n = a[1], level = a[2], interval = unname(boot:::norm.inter(tt, (1 + c(-a[2], a[2])) / 2)[, 2]))
})
out <- list(lme4 = as.character(packageVersion("lme4")), nsim = nsim, seed = 1,
            ML = list(names = rownames(x), lower = unname(x[, 1]), upper = unname(x[, 2])),
            norm_inter = list(t = t, cases = perc))
writeLines(jsonlite::toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE),
           "tests/reference/lme4_confint_boot_sleepstudy.json")
