{#- The log prior `lprior`, one statement per PriorStatement (brms's priors; hyperparameters are data).
    Context: priors [PriorStatement]. Shared by the Bayesian programs. #}
  real lprior = 0;  // log prior density (hyperparameters are data)
{% for p in priors %}
{% set args = [] %}
{% for a in range(p.n_args) %}{% set _ = args.append("pa_%d_%d" % (p.index, a + 1)) %}{% endfor %}
{% set target = p.param if p.scalar else p.param ~ "[Jp_" ~ p.index ~ "]" %}
  lprior += {{ p.dist }}_lpdf({{ target }} | {{ args | join(", ") }});  // prior {{ p.index }}
{% if p.truncated %}
{% if p.scalar %}
  lprior += -{{ p.dist }}_lccdf({{ p.lb }} | {{ args | join(", ") }});  // truncation at the lower bound
{% else %}
  lprior += -{{ p.dist }}_lccdf(rep_vector({{ p.lb }}, Np_{{ p.index }}) | {{ args | join(", ") }});  // truncation at the lower bound
{% endif %}
{% endif %}
{% endfor %}
