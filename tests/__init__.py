"""The test suite.

MLX's Linux CPU wheel ships a reference BLAS; load OpenBLAS before anything imports MLX, as
`mlxdeploy up` does, so that in-process inference runs at the server's speed. Parallel workers
(`make test`) share the machine's cores, so each gets one BLAS thread."""

import os

from mlxdeploy.engine.weights.blas import load_fast_blas

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
load_fast_blas()
