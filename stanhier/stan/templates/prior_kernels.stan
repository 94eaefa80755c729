{#- Prior densities written out: lpdf(x | args) = lc + kernel(x | args), with kernel = 0 at the
    point x0 that stanhier.model.priors.KERNEL_ZERO names, so lc = lpdf(x0 | args) depends on the
    hyperparameters alone and is data (kernel_constant). The gradient then needs a few scalar
    operations instead of an `_lpdf` template compiled for autodiff types in every program
    (several seconds of compile time per distribution). PriorStatement.kernel says which
    statements are written so; the others call Stan's `_lpdf`. The LKJ's kernel is in lprior.stan. -#}
{#- `lprior += kernel(x)`, written as Stan reads best; a: the Stan expressions of the arguments -#}
{% macro add_kernel(dist, x, a) -%}
{% if dist == "normal" %}lprior -= 0.5 * square(({{ x }} - {{ a[0] }}) / {{ a[1] }});
{%- elif dist == "student_t" %}lprior -= ({{ a[0] }} + 1) / 2 * log1p(square(({{ x }} - {{ a[1] }}) / {{ a[2] }}) / {{ a[0] }});
{%- elif dist == "cauchy" %}lprior -= log1p(square(({{ x }} - {{ a[0] }}) / {{ a[1] }}));
{%- elif dist == "exponential" %}lprior -= {{ a[0] }} * {{ x }};
{%- elif dist == "gamma" %}lprior += ({{ a[0] }} - 1) * log({{ x }}) - {{ a[1] }} * ({{ x }} - 1);
{%- else %}{{ no_kernel_written_for[dist] }}
{%- endif %}
{%- endmacro %}
