#!/bin/sh
# The compose stack's one-shot model job: train a JapaneseVowels GRU (many-to-one) and a
# basic_motions_stream GRU (many-to-many) and export both into the shared repository volume.
# A model already in the repository is kept, so `docker compose up` again does not add versions.
set -eu

REPOSITORY="${SEQSERVE_REPOSITORY:-/models}"
RUNS="${SEQSERVE_RUNS:-/runs}"
EPOCHS="${SEQSERVE_EPOCHS:-60}"

train_and_export() {
    name="$1"
    dataset="$2"
    if [ -d "${REPOSITORY}/${name}" ]; then
        echo "${name}: already in ${REPOSITORY}, kept"
        return
    fi
    seqserve train --dataset "${dataset}" --cell gru --epochs "${EPOCHS}" --out "${RUNS}/${name}"
    seqserve export "${RUNS}/${name}" --repository "${REPOSITORY}" --name "${name}"
}

train_and_export jv-gru japanese_vowels
train_and_export bms-gru basic_motions_stream
seqserve models --repository "${REPOSITORY}"
