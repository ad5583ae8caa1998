"""`mlxdeploy bench`: load.py sends the load, servers.py starts and stops the servers,
report.py holds what was measured (plot.py draws it), run.py ties them together."""


class BenchError(Exception):
    """The benchmark cannot run; the message is one actionable line."""
