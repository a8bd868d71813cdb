"""Benchmarks, apart from the service: `python -m serve_app.benchmark` (speed and memory of one
generation, or the memory plan for a GPU), `serve_app.benchmark.gpu_check` (the full-size check a
lent GPU runs, writing benchmarks/results/), `serve_app.benchmark.overhead` (the cost of serving)
and `serve_app.benchmark.autoscaling` (scaling on queue depth on a local cluster)."""
