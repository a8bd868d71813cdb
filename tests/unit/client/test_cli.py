"""`wan-client`'s help: the request's bounds and defaults as the service's request model has them
(its bounds are limits.py's)."""

from serve_app.api.protocol import VideoRequest
from serve_app.client.cli import build_parser
from serve_app.limits import MAX_FPS, MAX_FRAMES, MAX_GUIDANCE, MAX_SHIFT, MAX_SIDE, MAX_STEPS, MIN_FRAMES, MIN_SIDE


def test_the_help_gives_the_bounds_of_limits_and_the_defaults_of_the_request():
    parser = build_parser()
    generate = parser._subparsers._group_actions[0].choices["generate"]
    helps = {action.dest: action.help for action in generate._actions}
    defaults = {name: field.default for name, field in VideoRequest.model_fields.items()}
    assert helps["height"] == f"multiple of 32, {MIN_SIDE}-{MAX_SIDE} (default {defaults['height']})"
    assert helps["num_frames"] == f"4n+1, {MIN_FRAMES}-{MAX_FRAMES} (default {defaults['num_frames']})"
    # Steps, guidance and shift: the model's when omitted (GET /v1/models).
    assert helps["num_inference_steps"] == f"1-{MAX_STEPS} (default the model's)"
    assert helps["guidance_scale"] == f"1.0-{MAX_GUIDANCE} (default the model's)"
    assert helps["shift"] == f"0-{MAX_SHIFT} (default the model's)"
    assert defaults["num_inference_steps"] is defaults["guidance_scale"] is defaults["shift"] is None
    assert helps["fps"] == f"1-{MAX_FPS} (default {defaults['fps']})"


def test_lora_is_repeatable_path_colon_scale_and_a_urls_colons_are_its_own():
    args = build_parser().parse_args(
        [
            "generate",
            "a fox",
            "--lora",
            "tiny-style",
            "--lora",
            "motion:0.5",
            "--lora",
            "https://h.example/a.safetensors",
        ]
    )
    assert args.loras == ["tiny-style", ("motion", 0.5), "https://h.example/a.safetensors"]
    assert build_parser().parse_args(["generate", "a fox"]).loras is None
