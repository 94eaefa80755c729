"""stanhier: hierarchical regression with brms/lme4 formulas on Stan."""
