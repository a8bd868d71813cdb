"""Each model's job cost, counted on shape-only copies of the full-size modules: the passes its
recipe makes, and the VAE decode's share, which dominates a 3-pass job."""

import pytest
import yaml
from support.service import ROOT

from serve_app.benchmark.models import job_costs, main
from serve_app.config import AppArgs


@pytest.mark.slow  # counting the full-size modules' FLOPs takes seconds
def test_a_3_pass_job_is_mostly_its_decode_and_a_100_pass_job_is_not(capsys):
    args = AppArgs.model_validate(yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"])
    wan, fast = job_costs(args.served_models, 256, 256, 25)
    assert (wan["model"], wan["transformer_passes"], wan["guidance"]) == ("wan2.2-ti2v-5b", 100, True)
    assert (fast["model"], fast["transformer_passes"], fast["guidance"]) == ("fastwan2.2-ti2v-5b", 3, False)
    assert wan["transformer_flops"] == 100 * wan["transformer_flops_per_pass"]
    assert wan["vae_decode_flops"] == fast["vae_decode_flops"] > 0
    assert fast["text_encoder_flops"] * 2 == wan["text_encoder_flops"]  # no negative prompt without guidance
    assert fast["vae_decode_share"] > 0.5 > 0.1 > wan["vae_decode_share"]
    main(["--config", str(ROOT / "serve_config.yaml"), "--size", "256x256", "--frames", "25"])
    assert "| fastwan2.2-ti2v-5b | 256x256x25 | 3 | 3 |" in capsys.readouterr().out
