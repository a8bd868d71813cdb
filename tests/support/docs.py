"""Tables of the docs that are generated, so that they cannot drift from the code."""

from pathlib import Path

from pydantic_core import PydanticUndefined

from serve_app.config import AppArgs

ARGS_START, ARGS_END = "<!-- app-args:start -->", "<!-- app-args:end -->"


def arguments_table() -> str:
    """docs/configuration.md's table of the application's arguments, from AppArgs itself."""
    rows = ["| argument | default | meaning |", "|---|---|---|"]
    for name, field in AppArgs.model_fields.items():
        default = field.default_factory() if field.default is PydanticUndefined else field.default
        shown = "none" if default is None else f"`{str(default).replace(str(Path.home()), '~')}`"
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name}` | {shown} | {description} |")
    return "\n".join(rows)


def replace_between(document: str, start: str, end: str, generated: str) -> str:
    before, rest = document.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{generated}\n{end}{after}"
