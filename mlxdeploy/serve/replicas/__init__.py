"""Replicas of the whole server on Ray Serve (the spec's `cluster`).

Each replica is the app `mlxdeploy up` serves (every model, route, guard and metric), built on
its own Ray actor; Ray's HTTP proxy spreads requests over the replicas and its controller
starts, restarts and scales them. `options.py` holds what Ray is told (used by `up` and by
`render --as ray` alike), `deployment.py` runs on the replicas, `launch.py` on the machine
that runs `mlxdeploy up`. Only `deployment.py` and `launch.py` import Ray: it is an extra.
"""
