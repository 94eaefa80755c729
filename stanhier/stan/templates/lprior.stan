{#- The log prior `lprior`, one statement per PriorStatement (brms's priors; hyperparameters are data).
    Distributions with a kernel (prior_kernels.stan) add their data constant lc_i and the kernel, in
    scalar arithmetic; the others call Stan's `_lpdf`. Context: priors [PriorStatement]. Shared by the
    Bayesian programs. #}
{% from "prior_kernels.stan" import add_kernel %}
  real lprior = 0;  // log prior density (hyperparameters are data)
{% for p in priors %}
{% set args = [] %}
{% for a in range(p.n_args) %}{% set _ = args.append("pa_%d_%d" % (p.index, a + 1)) %}{% endfor %}
{% if p.dist == "lkj_corr_cholesky" %}
  lprior += lc_{{ p.index }};  // prior {{ p.index }}: lkj_corr_cholesky, its constant and kernel sum_m (M - m + 2 eta - 2) log L[m, m]
  for (m in 2:rows({{ p.param }})) {
    lprior += (rows({{ p.param }}) - m + 2 * {{ args[0] }} - 2) * log({{ p.param }}[m, m]);
  }
{% elif p.kernel and p.scalar %}
  lprior += lc_{{ p.index }};  // prior {{ p.index }}: {{ p.dist }}, its constant (data) and kernel
  {{ add_kernel(p.dist, p.param, args) }}
{% elif p.kernel %}
  lprior += lc_{{ p.index }};  // prior {{ p.index }}: {{ p.dist }}, its constant and a kernel for each position
{% set iargs = [] %}
{% for a in args %}{% set _ = iargs.append(a ~ "[i]") %}{% endfor %}
  for (i in 1:Np_{{ p.index }}) {
    {{ add_kernel(p.dist, p.param ~ "[Jp_" ~ p.index ~ "[i]]", iargs) }}
  }
{% else %}
{% set target = p.param if p.scalar else p.param ~ "[Jp_" ~ p.index ~ "]" %}
  lprior += {{ p.dist }}_lpdf({{ target }} | {{ args | join(", ") }});  // prior {{ p.index }}
{% endif %}
{% if p.truncated %}
  lprior += lt_{{ p.index }};  // truncation at the lower bound (a constant, so data)
{% endif %}
{% endfor %}
