#!/usr/bin/env bash
# Record the outputs of four fixed runs, to compare two versions of the package byte for byte:
#   bash benchmarks/record_outputs.sh OUT_DIR            (from the repository root; about 2 minutes on 2 cores)
#   diff -r OUT_A OUT_B
# 1. the quickstart recipe; 2. a tiny T5 on Sentences_AllAgree.txt (1 epoch); 3-4. batch scoring of 300 Financial
# PhraseBank sentences by the quickstart adapter, in score and generate mode. Only files that do not hold timings
# are kept (all_results.json without *_runtime / *_per_second / total_flos, predictions.jsonl).
set -euo pipefail
out=$(realpath -m "$1")
data=${FINANCIAL_PHRASEBANK_DIR:-../shared/data/financial_phrasebank}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
export PYTHONHASHSEED=0 CUDA_VISIBLE_DEVICES=""
python run_prefix_tuning.py recipes/quickstart.yaml --output_dir "$work/quickstart" >"$work/log1" 2>&1
python run_prefix_tuning.py recipes/quickstart.yaml --output_dir "$work/allagree" --train_file "$data/Sentences_AllAgree.txt" \
    --num_train_epochs 1 --eval_strategy no --logging_steps 50 >"$work/log2" 2>&1
head -n 300 "$data/Sentences_AllAgree.txt" >"$work/test.txt"
for mode in score generate; do
    python run_prefix_tuning.py --model_name_or_path "$work/quickstart" --test_file "$work/test.txt" --do_predict \
        --predict_mode "$mode" --output_dir "$work/predict_$mode" --report_to none >"$work/log_$mode" 2>&1
done
strip() {  # all_results.json without the figures that are timings
    python - "$1" "$2" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))
keep = {k: v for k, v in results.items() if not k.endswith(("_runtime", "_per_second")) and k != "total_flos"}
json.dump(keep, open(sys.argv[2], "w"), indent=2, sort_keys=True)
PY
}
strip "$work/quickstart/all_results.json" "$out/quickstart_all_results.json"
strip "$work/allagree/all_results.json" "$out/allagree_all_results.json"
for mode in score generate; do
    cp "$work/predict_$mode/predictions.jsonl" "$out/predictions_$mode.jsonl"
    strip "$work/predict_$mode/all_results.json" "$out/predict_${mode}_all_results.json"
done
ls -l "$out"
