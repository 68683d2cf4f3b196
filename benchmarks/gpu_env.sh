# Sourced (`. benchmarks/gpu_env.sh`) on a CUDA machine whose Python already has
# JAX (CUDA build), flax, optax, orbax-checkpoint and PyTorch: installs what the
# training path needs beyond those (PyWavelets, ml_collections)
# from the wheels in .whl/ when they are missing (no network needed; make the
# folder with `bash benchmarks/gpu_suite.sh --fetch-wheels`), and sets the
# environment the suite and `python3 -m wacnn_jax reproduce` run in.
if ! python3 -c "import pywt, ml_collections" 2>/dev/null \
    && compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/wacnn_site .whl/*.whl || return 1
  export PYTHONPATH=/tmp/wacnn_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
# Processes grow their GPU memory as needed, so that several share the card
# (the suite's full run, a child process, takes a fixed fraction instead).
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$PWD/workdirs/jax_cache}
