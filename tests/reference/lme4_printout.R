# lme4's summary() printouts that tests/test_ml_printout.py compares stanhier's with, line by line.
# Run from the repository root:  Rscript tests/reference/lme4_printout.R
# Writes tests/reference/lme4_printout_<case>.txt (R's default options: digits = 7, so lme4 prints
# with digits = 4; UTF-8 locale).
suppressMessages(library(lme4))
out <- function(name, model) {
  text <- capture.output(print(summary(model)))
  writeLines(c(paste0("# ", R.version.string, ", lme4 ", packageVersion("lme4")), text),
             file.path("tests", "reference", paste0("lme4_printout_", name, ".txt")))
}
sleepstudy <- read.csv("tests/data/sleepstudy.csv")
out("sleepstudy_REML", lmer(Reaction ~ Days + (Days | Subject), sleepstudy))
out("sleepstudy_ML", lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = FALSE))
out("sleepstudy_uncorrelated", lmer(Reaction ~ Days + (Days || Subject), sleepstudy))
fish <- read.csv("tests/data/fish.csv")
out("fish", glmer(fish_num ~ 1 + temperature + (1 | weather), fish, family = poisson))
# a family with a scale (Residual row, "t value"): PIRLS to 1e-10 (lme4's default 1e-7 leaves its objective
# noisy at this link; see tests/reference/make_links_reference.R); the control is not part of the printout
fish$y <- fish$fish_num + 1
m <- glmer(y ~ temperature + (1 | weather), fish, family = gaussian(link = "log"),
           control = glmerControl(optimizer = "nloptwrap", tolPwrss = 1e-10,
                                  optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-12, maxeval = 1e5)))
m@call$control <- NULL
out("fish_gaussian_log", m)
