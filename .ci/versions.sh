#!/usr/bin/env bash
# The version ranges requirements.txt promises, tested: the fast tier and the tiny demo sweep, each in a fresh
# virtual environment, (1) with Google Colab's TensorFlow and Keras (.ci/colab-constraints.txt) and (2) with the
# lowest versions requirements.txt and requirements-dev.txt allow (uv's --resolution lowest-direct). Run by .ci/run
# after the suite; alone: .ci/versions.sh [colab|floor]. About 6 minutes each on 2 cores, most of it installing.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet uv
base_python="$(python3 -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
for name in "${@:-colab floor}"; do
  for env in $name; do
    venv=".ci/venv-$env"
    rm -rf "$venv"
    python3 -m uv venv --quiet --python "$base_python" "$venv"
    case "$env" in
      colab) python3 -m uv pip install --quiet --python "$venv/bin/python" -r requirements-dev.txt -c .ci/colab-constraints.txt ;;
      floor) python3 -m uv pip install --quiet --python "$venv/bin/python" -r requirements-dev.txt --resolution lowest-direct ;;
      *) echo "versions.sh: unknown set $env (colab or floor)" >&2; exit 2 ;;
    esac
    "$venv/bin/python" -c 'import sys, tensorflow as tf, keras, numpy; print(f"{sys.argv[1]}: TensorFlow {tf.__version__}, Keras {keras.__version__}, NumPy {numpy.__version__}")' "$env"
    "$venv/bin/python" -m pytest -m "not slow" -q -p no:cacheprovider
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -n 0 "tests/test_run_all.py::test_demo_sweep_leaves_every_output"
  done
done
