r"""The Jinja2 environment that renders ``stanhier/stan/templates/`` (shipped in the wheel).

Templates are looked up in the package (not the working directory), undefined
variables are errors (``StrictUndefined``), and :func:`render` squeezes runs of blank lines.

Example
-------
>>> from stanhier.stan.templating import environment, render
>>> sorted(t for t in environment().list_templates() if t.endswith(".stan"))[:1]
['brm.stan']
>>> import jinja2
>>> try:
...     environment().from_string("{{ missing }}").render()
... except jinja2.UndefinedError as err:
...     print(err)
'missing' is undefined
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import jinja2

__all__ = ["render", "environment"]


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The Jinja2 environment over ``stanhier/stan/templates/`` (made once)."""
    folder = resources.files("stanhier.stan") / "templates"
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context) -> str:
    r"""Render ``templates/<template>``; blank-line runs are squeezed to one, trailing spaces dropped.

    >>> from stanhier.stan.codegen import build_model   # renders brm.stan
    >>> code = build_model("y ~ x", {"y": [1.0, 2.0, 3.0], "x": [0.0, 1.0, 3.0]}).code
    >>> "\n\n\n" in code, code.endswith("}\n"), any(line != line.rstrip() for line in code.splitlines())
    (False, True, False)
    """
    text = environment().get_template(template).render(**context)
    lines, blank = [], False
    for line in text.splitlines():
        is_blank = not line.strip()
        if is_blank and blank:
            continue
        lines.append(line.rstrip())
        blank = is_blank
    return "\n".join(lines).strip() + "\n"
