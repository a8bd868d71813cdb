"""What the tests that compile the tiny transformer share."""

# One warm-up size for every test that compiles `regional`: in one worker (the `compiles` marker),
# the first compiles the block's graphs and the others read them from the run's TorchInductor
# cache (48 s cold, 12 s warm). Not square: a square warm-up lets dynamo assume width == height
# in every later graph.
COMPILE_WARM_UP = "96x64x25"
