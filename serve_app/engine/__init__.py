"""The Generator deployment's side: torch and diffusers, no web framework."""
