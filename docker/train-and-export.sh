#!/bin/sh
# The compose stack's one-shot model job: train a JapaneseVowels GRU (many-to-one) and a
# basic_motions_stream GRU (many-to-many) and export both into the shared repository volume.
# A model already in the repository is kept, so `docker compose up` again does not add versions.
# Training flags come from the environment like any seqserve flag, e.g. SEQSERVE_TRAIN_EPOCHS=20.
set -eu

MODEL_REPOSITORY="${MODEL_REPOSITORY:-/models}"
RUNS_DIR="${RUNS_DIR:-/runs}"

train_and_export() {
    name="$1"
    dataset="$2"
    if [ -d "${MODEL_REPOSITORY}/${name}" ]; then
        echo "${name}: already in ${MODEL_REPOSITORY}, kept"
        return
    fi
    seqserve train --dataset "${dataset}" --cell gru --out "${RUNS_DIR}/${name}"
    seqserve export "${RUNS_DIR}/${name}" --repository "${MODEL_REPOSITORY}" --name "${name}"
}

train_and_export jv-gru japanese_vowels
train_and_export bms-gru basic_motions_stream
seqserve models --repository "${MODEL_REPOSITORY}"
