#!/usr/bin/env sh
# MLX's Linux CPU wheel ships the reference BLAS; OpenBLAS makes CPU matmuls >10x faster and
# mlxdeploy loads it automatically when present. Install it where we can; never fail the set-up.
[ "$(uname -s)" = "Linux" ] || exit 0
for lib in /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 /usr/lib64/libopenblas*.so.0; do
  [ -e "$lib" ] && exit 0
done
echo "Installing OpenBLAS (Debian package libopenblas0-pthread) for fast CPU matmuls"
"$(dirname "$0")/apt-install.sh" libopenblas0-pthread && exit 0
echo "note: could not install OpenBLAS; mlxdeploy will use MLX's slower reference BLAS." >&2
echo "      Install libopenblas0-pthread (Debian/Ubuntu) or openblas (Fedora) to speed it up." >&2
exit 0
