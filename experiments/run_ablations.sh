#!/usr/bin/env bash
# Every study of experiments/README.md, one run after the other (each a few minutes on 2 CPU cores),
# then the plots. Run from the repository root:
#   bash experiments/run_ablations.sh            # all studies
#   bash experiments/run_ablations.sh lr         # one of: lr ablations nanogpt plots
# Runs land in logs/<experiment name>/...; the plots are rebuilt from the newest run of each. The
# 250-step ablations of the README are the same experiments with the overrides given there.
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN="python -m lit_llm.train"
# Progress bars are for terminals; these runs log to TensorBoard (and train.log) only.
QUIET="callbacks.progress_bar=null trainer.enable_progress_bar=false"
ABLATIONS="no_norm post_norm nope silu_ffn tied"
NANOGPT_MINUTES=${NANOGPT_MINUTES:-3}

newest() {  # newest run folder (one holding .hydra/) under logs/$1
    { ls -td logs/"$1"/*/.hydra logs/"$1"/*/*/.hydra 2>/dev/null || true; } | head -n 1 | xargs -r dirname
}

lr() {  # learning-rate sweep: one Hydra multirun, three jobs in logs/ablation_base/multirun_<time>/{0,1,2}
    $TRAIN -m experiment=ablation_base optimizer.lr=3e-4,1e-3,3e-3 $QUIET
}

ablations() {  # one switch each, against the lr=1e-3 job of the sweep (identical to experiment=ablation_base)
    for a in $ABLATIONS; do $TRAIN experiment=ablation_$a $QUIET; done
}

nanogpt() {  # the full shakespeare experiment stopped by a wall-clock budget, validated every 10 steps
    $TRAIN experiment=shakespeare "+trainer.max_time=$(printf '00:00:%02d:00' "$NANOGPT_MINUTES")" \
        trainer.val_check_interval=10 data.val_windows=64 callbacks.text_samples=null $QUIET
}

plots() {  # the figures of experiments/README.md, from the newest run of each experiment
    local sweep base runs=()
    sweep=$(ls -td logs/ablation_base/multirun_* | head -n 1)
    base=$(dirname "$(dirname "$(grep -lx -- "- optimizer.lr=0.001" "$sweep"/*/.hydra/overrides.yaml | head -n 1)")")
    for a in $ABLATIONS; do
        if [ -n "$(newest ablation_$a)" ]; then runs+=("$(newest ablation_$a)"); fi
    done
    python -m lit_llm.plot "$sweep"/[0-9]* --out experiments/lr_sweep.png \
        --title "learning rate sweep: ablation_base (2000 steps)"
    python -m lit_llm.plot "$base" "${runs[@]}" --out experiments/ablations_2000steps.png \
        --title "ablations of ablation_base, 2000 steps"
}

if [ $# -eq 0 ]; then set -- lr ablations nanogpt plots; fi
for study in "$@"; do "$study"; done
