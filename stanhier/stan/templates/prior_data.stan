{#- Data of the prior statements (hyperparameters and positions). Context: priors [PriorStatement]. #}
{% for p in priors %}
  // prior {{ p.index }}: {{ p.dist }} on {{ p.comment }} ({{ p.param }})
{% if not p.scalar %}
  int<lower=0> Np_{{ p.index }};
  array[Np_{{ p.index }}] int<lower=1> Jp_{{ p.index }};
{% for a in range(p.n_args) %}
  vector[Np_{{ p.index }}] pa_{{ p.index }}_{{ a + 1 }};
{% endfor %}
{% else %}
{% for a in range(p.n_args) %}
  real pa_{{ p.index }}_{{ a + 1 }};
{% endfor %}
{% endif %}
{% if p.kernel %}
  real lc_{{ p.index }};  // the prior's log density where its kernel is 0 (its normalizing constant)
{% endif %}
{% if p.truncated %}
  real lt_{{ p.index }};  // -log P(X > lower bound) under this prior: its truncation constant
{% endif %}
{% endfor %}
