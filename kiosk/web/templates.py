"""Server-rendered HTML pages: the one place that sets up Jinja2 for a folder of templates, so that every page is
rendered the same careful way."""

from __future__ import annotations

from pathlib import Path

import jinja2


def template_environment(folder: Path) -> jinja2.Environment:
    """Templates from `folder`, every value HTML-escaped unless a template says otherwise, and a name a template
    uses but was not given is an error rather than an empty string."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
