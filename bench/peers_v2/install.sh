#!/usr/bin/env bash
# Builds everything run.sh needs under $W, one step at a time (2 cores, other work
# running); a step whose result is already there is skipped. Writes nothing into $PROJ.
#   projpy     the path of the python that runs the project: $PROJ/.venv's when it imports tensorflow,
#              tritonclient (http and grpc) and the service (the checkout's own dependencies, gRPC included),
#              else proj/ (below)
#   proj/      only without a usable $PROJ/.venv: the frozen versions of the project's venv (proj-reqs.txt:
#              TF 2.21.0, keras 3.15.1, ...) + tritonclient[http,grpc]; the checkout through a .pth (no pip -e)
#   models/    digits/1, the SavedModel every server loads (trained here if missing, ~1 min CPU)
#   bodies/    request bodies + expected class (make_bodies.py): V2 JSON, binary extension, framed gRPC
#   triton/    venv on Debian's /usr/bin/python3.11 (the python-backend stub links Debian's
#              libpython3.11): nvidia-pytriton 0.7.0 (bundles tritonserver 2.51.0) + tensorflow 2.21.0
#   triton_dist/  the bundled tritonserver, python backend and the 3.11 stub, as PyTriton lays them out
#   mlserver/  mlserver 1.7.1 + tensorflow 2.21.0 + uvloop 0.21.0 (uvloop 0.22+ crash-loops MLServer's
#              inference workers: SeldonIO/MLServer#2286)
#   kserve/    kserve 0.21.0 + tensorflow 2.21.0 (optional: WITH_KSERVE=0 skips it)
set -u
H=$(cd "$(dirname "$0")" && pwd)
W=${V2_WORK:?set V2_WORK to a scratch folder}
PROJ=${PROJ:?set PROJ to the project checkout}
PY=${PYTHON:-python3}
mkdir -p $W/logs
step() { echo "=== $(date +%T) $*"; }
ok() { [ -x "$1/bin/python" ] && "$1/bin/python" -c "$2" > /dev/null 2>&1; }

NEEDS="import tensorflow, tritonclient.http, tritonclient.grpc, service"
if (cd $PROJ && ok $PROJ/.venv "$NEEDS"); then
  echo $PROJ/.venv/bin/python > $W/projpy
else
  if ! (cd $PROJ && ok $W/proj "$NEEDS"); then
    step proj
    $PY -m venv $W/proj && $W/proj/bin/pip install -q -r $H/proj-reqs.txt "tritonclient[http,grpc]" > $W/logs/pip-proj.log 2>&1; echo "rc=$?"
    echo $PROJ > $W/proj/lib/python3.11/site-packages/imgcls-checkout.pth
  fi
  echo $W/proj/bin/python > $W/projpy
fi
PROJPY=$(cat $W/projpy)
echo "project python: $PROJPY"
if [ ! -e $W/models/digits/1/metadata.json ]; then
  step "train digits -> $W/models"
  (cd $W && $PROJPY $PROJ/training/train.py --models-dir $W/models --run-dir $W/runs/digits) > $W/logs/train.log 2>&1; echo "rc=$?"
fi
if [ ! -e $W/bodies/expected.json ] || [ ! -e $W/bodies/grpc_uint8.bin ]; then
  step bodies
  (cd $PROJ && $PROJPY $H/make_bodies.py $W/models/digits/1 $W/bodies) 2> $W/logs/bodies.log; echo "rc=$?"
fi
if ! ok $W/triton "import pytriton, tensorflow"; then
  step triton
  /usr/bin/python3.11 -m venv $W/triton && $W/triton/bin/pip install -q nvidia-pytriton==0.7.0 tensorflow==2.21.0 > $W/logs/pip-triton.log 2>&1; echo "rc=$?"
fi
if [ ! -x $W/triton_dist/bin/tritonserver ]; then
  step triton_dist
  S=$W/triton/lib/python3.11/site-packages/pytriton/tritonserver
  mkdir -p $W/triton_dist && cp -a $S/bin $S/backends $S/caches $W/triton_dist/ \
    && rm -rf $W/triton_dist/backends/python/__pycache__ \
    && cp $S/python_backend_stubs/3.11/triton_python_backend_stub $W/triton_dist/backends/python/; echo "rc=$?"
fi
if ! ok $W/mlserver "import mlserver, tensorflow"; then
  step mlserver
  $PY -m venv $W/mlserver && $W/mlserver/bin/pip install -q mlserver==1.7.1 tensorflow==2.21.0 "uvloop==0.21.0" > $W/logs/pip-mlserver.log 2>&1; echo "rc=$?"
fi
if [ "${WITH_KSERVE:-1}" = 1 ] && ! ok $W/kserve "import kserve, tensorflow"; then
  step kserve
  $PY -m venv $W/kserve && $W/kserve/bin/pip install -q kserve==0.21.0 tensorflow==2.21.0 > $W/logs/pip-kserve.log 2>&1; echo "rc=$?"
fi
step done
