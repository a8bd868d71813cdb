"""The bounds of a video request, shared by the HTTP validation, the OpenAI form mapping and the
memory capacity checks."""

SIZE_MULTIPLE = 32  # the VAE compresses 16x and the transformer patches 2x
MIN_SIDE, MAX_SIDE = 32, 2048
MIN_FRAMES, MAX_FRAMES = 25, 121
MAX_STEPS = 100
MAX_SEED = 2**63 - 1
