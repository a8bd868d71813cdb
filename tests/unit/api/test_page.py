"""The web page's values from the server: the request's bounds (limits.py's, through
`VideoRequest`) and the final job statuses are written in, none is hard-coded in the page."""

import json
import re

from fastapi.testclient import TestClient
from support.api import api

from serve_app import limits
from serve_app.api.page import server_values
from serve_app.messages import JobStatus

VALUES = re.compile(r'<script id="server-values" type="application/json">(.*?)</script>', re.S)


def test_the_page_carries_the_bounds_of_limits_and_the_final_statuses(tmp_path):
    app, _ = api(tmp_path)
    html = TestClient(app).get("/").text
    values = json.loads(VALUES.search(html).group(1))
    assert values == json.loads(json.dumps(server_values()))
    fields = values["fields"]
    assert (fields["num_frames"]["minimum"], fields["num_frames"]["maximum"]) == (limits.MIN_FRAMES, limits.MAX_FRAMES)
    assert fields["width"]["maximum"] == fields["height"]["maximum"] == limits.MAX_SIDE
    assert fields["num_inference_steps"]["maximum"] == limits.MAX_STEPS
    assert fields["guidance_scale"]["maximum"] == limits.MAX_GUIDANCE and fields["fps"]["maximum"] == limits.MAX_FPS
    assert values["max_text_chars"] == limits.MAX_TEXT_CHARS and values["max_seed"] == str(limits.MAX_SEED)
    assert set(values["terminal_statuses"]) == {status for status in JobStatus if status.is_terminal}


def test_the_page_hard_codes_no_bound_and_no_status_set(tmp_path):
    app, _ = api(tmp_path)
    page = VALUES.sub("", TestClient(app).get("/").text)  # all but the values the server writes in
    # (Not MAX_STEPS: 100 is also the page's percentage of progress.)
    for bound in (limits.MIN_FRAMES, limits.MAX_FRAMES, limits.MAX_SIDE, limits.MAX_TEXT_CHARS, limits.MAX_SEED):
        assert not re.search(rf"\b{bound}\b", page), bound
    assert '"cancelled"' not in page
