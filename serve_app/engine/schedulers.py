"""The schedulers of the two recipes, made fresh for each generation (a scheduler keeps its step
state): UniPC on flow sigmas at the request's shift (Wan2.2's own), and DMD: FlowMatchEuler with
stochastic re-noising at a distilled model's fixed timesteps, drawing its noise from the request's
own generator."""

from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from serve_app.config import Recipe
from serve_app.engine.full_size import wan_scheduler


class DMDScheduler(FlowMatchEulerDiscreteScheduler):  # type: ignore[misc]  # Any: mypy skips diffusers (pyproject.toml)
    """At each of `timesteps` (sigma = t / 1000) the model predicts x0, re-noised to the next
    timestep's sigma (diffusers' `stochastic_sampling`); the last step gives x0 itself.

    The Wan pipelines call `set_timesteps(n)` and `step(...)` without a generator: the timesteps
    come from here, and the re-noising from `generator`, so that the same seed makes the same
    video and concurrent jobs never share a random stream."""

    def __init__(self, timesteps: list[int], shift: float, generator: torch.Generator) -> None:
        super().__init__(shift=shift, stochastic_sampling=True)
        self.fixed_timesteps = list(timesteps)
        self.generator = generator

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: str | torch.device | None = None, **_: Any
    ) -> None:
        timesteps = torch.tensor(self.fixed_timesteps, dtype=torch.float32, device=device)
        self.timesteps = timesteps
        self.sigmas = torch.cat([timesteps / self.config.num_train_timesteps, torch.zeros(1, device=device)])
        self.num_inference_steps = len(timesteps)
        self._step_index = None
        self._begin_index = None

    def step(self, *args: Any, generator: torch.Generator | None = None, **kwargs: Any) -> Any:
        return super().step(*args, generator=generator or self.generator, **kwargs)


def make_scheduler(recipe: Recipe, shift: float, generator: torch.Generator) -> Any:
    """The scheduler of one generation by `recipe`."""
    if recipe.timesteps is not None:
        return DMDScheduler(recipe.timesteps, shift, generator)
    return wan_scheduler(shift)
