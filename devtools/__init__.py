"""What the project's own tests and benchmarks install on a development or CI machine.

Not part of the gpuflow wheel. It lives outside ``tests/`` because the benchmarks use it
too and import nothing from ``tests/``.
"""
