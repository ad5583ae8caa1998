"""One model split over several ranks (the spec's `distributed`), on mx.distributed.

`mlxdeploy up` starts the ranks through mlx.launch (`launch.py`); each runs `rank.py`. Rank 0
serves HTTP as `up` does on one process, and its engine hands every request to the other
ranks, which generate in lockstep on their own part of the weights (`engine/peers.py`).
"""
