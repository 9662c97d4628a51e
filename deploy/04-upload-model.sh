#!/usr/bin/env bash
# Step 4: put the NLI model into the models bucket, once (the model server mounts it read-only;
# it never downloads from the Hugging Face Hub at start-up).
#   deploy/04-upload-model.sh [HUB_MODEL_ID]      default facebook/bart-large-mnli
# The folder name in the bucket is terraform's model_gcs_path (default bart-large-mnli).
source "$(dirname "$0")/lib.sh"

model_id="${1:-facebook/bart-large-mnli}"
folder="$(basename "${model_id}")"
bucket="$(tf_output models_bucket)"
workdir="$(mktemp -d)"
trap 'rm -rf "${workdir}"' EXIT

python3 -m venv "${workdir}/venv"
"${workdir}/venv/bin/pip" install --quiet "huggingface_hub==2.4.0"
"${workdir}/venv/bin/python" - "${model_id}" "${workdir}/${folder}" <<'PY'
import sys
from huggingface_hub import snapshot_download
# Weights as safetensors, the tokenizer and the config: what from_pretrained reads.
snapshot_download(sys.argv[1], local_dir=sys.argv[2],
                  allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt"])
PY
gcloud storage cp --recursive "${workdir}/${folder}" "gs://${bucket}/"
gcloud storage ls "gs://${bucket}/${folder}/"
echo "set model_gcs_path = \"${folder}\" in terraform/prod.tfvars if it is not the default"
