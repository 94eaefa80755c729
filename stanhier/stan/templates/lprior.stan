{#- The log prior `lprior`, one statement per PriorStatement (brms's priors; hyperparameters are data).
    Context: priors [PriorStatement]. Shared by the Bayesian programs. #}
  real lprior = 0;  // log prior density (hyperparameters are data)
{% for p in priors %}
{% set args = [] %}
{% for a in range(p.n_args) %}{% set _ = args.append("pa_%d_%d" % (p.index, a + 1)) %}{% endfor %}
{% set target = p.param if p.scalar else p.param ~ "[Jp_" ~ p.index ~ "]" %}
  lprior += {{ p.dist }}_lpdf({{ target }} | {{ args | join(", ") }});  // prior {{ p.index }}
{% if p.truncated %}
  lprior += lt_{{ p.index }};  // truncation at the lower bound (a constant, so data)
{% endif %}
{% endfor %}
