"""The error codes: one enum, each code with its HTTP status; the service names no code outside
it, and docs/api.md lists each with its status."""

import ast
import re

import pytest
from pydantic import ValidationError
from support.service import ROOT

from serve_app.error_codes import ErrorCode
from serve_app.messages import JobError, Refusal

# A row of the errors table in docs/api.md: `| 404, 405 | `not_found`, `method_not_allowed` | ...`.
ROW = re.compile(r"^\| ([^|]+) \| ([^|]+) \|", re.M)


def test_every_code_has_an_http_error_status():
    for code in ErrorCode:
        assert isinstance(code.http_status, int) and 400 <= code.http_status <= 599, code
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code), code
    assert ErrorCode("queue_full").http_status == 503 and ErrorCode.VIDEO_TOO_LARGE.http_status == 400


def test_a_code_outside_the_enum_is_refused_by_the_messages():
    with pytest.raises(ValidationError):
        JobError(code="made_up", message="x")
    assert "status" not in Refusal.model_fields  # Jobs names a code; the Ingress picks the status


def test_the_service_names_every_code_through_the_enum():
    """No `code="..."` and no `code = "..."` in the package: a literal would bypass the enum."""
    literals = []
    for path in sorted((ROOT / "serve_app").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            keywords = node.keywords if isinstance(node, ast.Call) else []
            values = [k.value for k in keywords if k.arg == "code"]
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "code" for t in node.targets):
                values.append(node.value)
            literals += [f"{path.name}:{v.lineno}" for v in values if isinstance(v, ast.Constant)]
    assert literals == []


def test_the_api_docs_list_every_code_with_its_status():
    errors = (ROOT / "docs" / "api.md").read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for statuses, codes in ROW.findall(errors):
        for code in re.findall(r"`([a-z_]+)`", codes):
            documented[code] = {int(status) for status in re.findall(r"[0-9]{3}", statuses)}
    assert set(documented) == set(ErrorCode)
    for code in ErrorCode:
        assert code.http_status in documented[code], code
