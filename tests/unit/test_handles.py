"""A call through a deployment's `Handle` is checked by mypy (`make lint`): its method's name, its
arguments and the type of its answer. Runs mypy with the project's settings and cache (warm after
`make lint`; about half a minute of CPU without it)."""

import textwrap

import pytest
from mypy import api
from support.service import ROOT

WRONG_CALLS = """
from serve_app.handles import Handle, JobsDeployment


async def calls(jobs: Handle[JobsDeployment]) -> None:
    await jobs.call(JobsDeployment.get, "owner", "video_1")  # right
    await jobs.call(JobsDeployment.gett, "owner", "video_1")
    await jobs.call(JobsDeployment.get, "owner")
    count: int = await jobs.call(JobsDeployment.get, "owner", "video_1")
"""


@pytest.mark.slow
def test_mypy_refuses_a_wrong_method_name_argument_or_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("MYPYPATH", str(ROOT))  # this checkout's package, whatever is installed
    module = tmp_path / "calls.py"
    module.write_text(textwrap.dedent(WRONG_CALLS))
    out, _, status = api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(ROOT / ".mypy_cache"), str(module)]
    )
    errors = [line.split(": error: ")[1] for line in out.splitlines() if ": error: " in line]
    assert status == 1
    assert len(errors) == 3, out
    assert '"type[JobsDeployment]" has no attribute "gett"' in errors[0]
    assert 'Missing positional argument "job_id"' in errors[1]
    assert "Coroutine[Any, Any, int]" in errors[2]  # the answer is a Job | None, not an int
