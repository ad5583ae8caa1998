"""The test suite.

MLX's Linux CPU wheel ships a reference BLAS; load OpenBLAS before anything imports MLX, as
`mlxdeploy up` does, so that in-process inference runs at the server's speed."""

from mlxdeploy.engine.weights.blas import load_fast_blas

load_fast_blas()
