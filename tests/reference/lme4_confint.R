# lme4's profile confidence intervals (confint(m), method = "profile") for sleepstudy, which
# tests/test_confint.py compares stanhier's with. Run from the repository root:
#   Rscript tests/reference/lme4_confint.R   (writes tests/reference/lme4_confint_sleepstudy.json)
suppressMessages(library(lme4))
sleepstudy <- read.csv("tests/data/sleepstudy.csv")
ci <- function(m) { x <- suppressMessages(confint(m, oldNames = FALSE)); list(names = rownames(x), lower = unname(x[, 1]), upper = unname(x[, 2])) }
ml <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = FALSE)
reml <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy)
one <- lmer(Reaction ~ Days + (1 | Subject), sleepstudy, REML = FALSE)
out <- list(lme4 = as.character(packageVersion("lme4")),
            ML = ci(ml), REML = ci(reml), ML_intercept = ci(one))
print(confint(ml)); print(confint(reml))
writeLines(jsonlite::toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE),
           "tests/reference/lme4_confint_sleepstudy.json")
