"""The Jinja2 environment that renders ``stanhier/stan/templates/`` (shipped in the wheel).

Example
-------
>>> from stanhier.templating import render
>>> "parameters" in render("brm.stan", s=None) or True   # doctest: +SKIP
True
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import jinja2

__all__ = ["render", "environment"]


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    folder = resources.files("stanhier.stan") / "templates"
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context) -> str:
    """Render ``templates/<template>``; blank-line runs are squeezed to one."""
    text = environment().get_template(template).render(**context)
    lines, blank = [], False
    for line in text.splitlines():
        is_blank = not line.strip()
        if is_blank and blank:
            continue
        lines.append(line.rstrip())
        blank = is_blank
    return "\n".join(lines).strip() + "\n"
