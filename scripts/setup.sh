#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and run sellable; does nothing that is already done.
#   - system packages (apt-get, only when missing): protoc for lance, libclang for bindgen, redis
#   - XGBoost 3.4.1 as a shared library from the xgboost-cpu wheel on PyPI, into .deps/xgboost
#   - the Python clients of the tests (schemathesis, pyarrow, the ADBC Flight SQL driver) and the
#     local S3-compatible server of the object-storage test (moto) into the virtual environment
#     .deps/venv
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
# libclang itself (libclang.so*, libclang-NN.so*), not libclang-cpp, which bindgen cannot use
compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null || compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null \
  || compgen -G '/usr/lib/x86_64-linux-gnu/libclang-[0-9]*.so*' >/dev/null || missing+=(libclang-dev)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v cc >/dev/null || missing+=(build-essential)
command -v unzip >/dev/null || command -v python3 >/dev/null || missing+=(unzip)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

XGB_DIR=.deps/xgboost
XGB_LIB=$XGB_DIR/xgboost/lib
if [ ! -e "$XGB_LIB/libxgboost.so.3" ]; then
  echo "setup: fetching XGBoost 3.4.1 (xgboost-cpu wheel)"
  command -v pip3 >/dev/null || command -v pip >/dev/null || {
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip >/dev/null
  }
  PIP=$(command -v pip3 || command -v pip)
  tmp=$(mktemp -d)
  "$PIP" download -q xgboost-cpu==3.4.1 --no-deps --only-binary=:all: \
    --python-version 3.12 --platform manylinux_2_28_x86_64 -d "$tmp"
  rm -rf "$XGB_DIR" && mkdir -p "$XGB_DIR"
  python3 -m zipfile -e "$tmp"/xgboost_cpu-3.4.1-*.whl "$tmp/wheel"
  cp -r "$tmp/wheel/xgboost/lib" "$XGB_DIR/xgboost-lib-tmp"
  mkdir -p "$XGB_DIR/xgboost"
  mv "$XGB_DIR/xgboost-lib-tmp" "$XGB_LIB"
  cp -r "$tmp/wheel/xgboost_cpu.libs" "$XGB_DIR/"
  # the library's SONAME is libxgboost.so.3: the loader looks for that name
  ln -sf libxgboost.so "$XGB_LIB/libxgboost.so.3"
  rm -rf "$tmp"
fi

# The Python clients of the tests, in a virtual environment of the project's own: schemathesis
# checks the REST API against its OpenAPI document; pyarrow and the ADBC Flight SQL driver query
# the Flight SQL server as analysts do; moto's server is the S3 an s3:// lake is tested against.
VENV=.deps/venv
PYTHON_CLIENTS="schemathesis==4.32.5 pyarrow==22.0.0 adbc-driver-manager==1.9.0 adbc-driver-flightsql==1.9.0 moto[server]==5.2.6"
if [ "$(cat "$VENV/.clients" 2>/dev/null)" != "$PYTHON_CLIENTS" ]; then
  echo "setup: installing $PYTHON_CLIENTS into $VENV"
  python3 -m venv "$VENV" 2>/dev/null || {
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  }
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q --disable-pip-version-check $PYTHON_CLIENTS
  echo "$PYTHON_CLIENTS" > "$VENV/.clients"
fi
