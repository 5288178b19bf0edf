"""attestgate benchmarks: ``python -m bench [--quick] [--only NAME] [--json]``.

Every figure is printed next to a baseline measured in the same run on the same
machine (bare noiseprotocol handshake, raw redis-py XADD, raw pyzmq echo), so the
ratio says what attestgate's own layers cost. Nothing here asserts a threshold.
"""
