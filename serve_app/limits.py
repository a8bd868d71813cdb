"""The bounds of a video request, their one definition: the HTTP validation (`api.protocol`), the
OpenAI form mapping, the memory capacity checks, the web page and the CLI's help (both from the
request model's schema) and the load tests take them from here."""

SIZE_MULTIPLE = 32  # the VAE compresses 16x and the transformer patches 2x
MIN_SIDE, MAX_SIDE = 32, 2048
MIN_FRAMES, MAX_FRAMES = 25, 121
MAX_STEPS = 100
MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 20.0
MAX_FPS = 60
MAX_SHIFT = 20.0  # the flow shift of the sampling schedule
MAX_SEED = 2**63 - 1
MAX_TEXT_CHARS = 10_000  # a prompt, a negative prompt
MAX_URL_CHARS = 4096
MAX_LORAS = 4  # adapters in one request
MAX_LORA_SCALE = 4.0
# What a caller names that the service stores or echoes (a form field's name, an upload's file
# name, a model name): at most this long.
MAX_NAME_CHARS = 64
# A model's id (a served model's, or a hub id as the OpenAI SDK's `model=` may send).
MODEL_ID_PATTERN = rf"[A-Za-z0-9][A-Za-z0-9._:/-]{{0,{MAX_NAME_CHARS - 1}}}"
