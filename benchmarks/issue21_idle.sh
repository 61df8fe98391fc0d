#!/usr/bin/env bash
# The idle-machine measurements of BENCHMARKS.md's issue-21 section: start-up, step profiles, the main job before /
# after, the ImageFolder comparison and the not-slow test subset. Run on an otherwise idle machine:
#   BEFORE=<a clone of commit f2bd80f> OUT=/tmp/m benchmarks/issue21_idle.sh
# ("before" runs with PYTHONPATH=$BEFORE in this checkout's virtual environment; step and ImageFolder records are
# appended to benchmarks/results.jsonl)
set -u
REPO="$(cd "$(dirname "$0")/.." && pwd)"
BEFORE="${BEFORE:?set BEFORE to a clone of commit f2bd80f}"
OUT="${OUT:-/tmp/lit_vit_issue21}"
mkdir -p "$OUT"
export NO_ALBUMENTATIONS_UPDATE=1
. "$REPO"/.venv/bin/activate
t() { local s=$(date +%s.%N); "$@" > /dev/null 2>&1; local rc=$?; echo "$(echo "$(date +%s.%N) - $s" | bc) rc=$rc"; }
echo "load before: $(cat /proc/loadavg)"
for label in after before; do
  if [ $label = before ]; then cd "$BEFORE"; export PYTHONPATH="$BEFORE"; else cd "$REPO"; unset PYTHONPATH; fi
  for c in "--help" "fit --help"; do for i in 1 2 3; do echo "startup $label python -m lit_vit $c: $(t python -m lit_vit $c)"; done; done
  for i in 1 2 3; do echo "startup $label import lit_vit.cli: $(t python -c 'import lit_vit.cli')"; done
done
unset PYTHONPATH
cd "$REPO"
echo "load: $(cat /proc/loadavg)"
python -m lit_vit bench --config experiments/ablation_pos.yaml --mode step --warmup 5 --profile-steps 60 --threads 1 --output benchmarks/results.jsonl --label "main job (ablation_pos base config), batch path" > "$OUT"/step_batch.txt 2>&1
python -m lit_vit bench --config experiments/ablation_pos.yaml --mode step --warmup 5 --profile-steps 60 --threads 1 --output benchmarks/results.jsonl --label "main job (ablation_pos base config), per-sample path" --data.init_args.augment_on sample > "$OUT"/step_sample.txt 2>&1
python -m lit_vit bench --config experiments/quickstart.yaml --mode step --warmup 5 --profile-steps 60 --output benchmarks/results.jsonl --label "quickstart, batch path" > "$OUT"/step_qs.txt 2>&1
echo "load: $(cat /proc/loadavg)"
cd "$BEFORE" && rm -rf "$OUT"/abl_before && echo "main job before (f2bd80f): $(PYTHONPATH="$BEFORE" t python -m lit_vit fit --config experiments/ablation_pos.yaml --trainer.default_root_dir "$OUT"/abl_before)"
cd "$REPO" && rm -rf "$OUT"/abl_after && echo "main job after: $(t python -m lit_vit fit --config experiments/ablation_pos.yaml --trainer.default_root_dir "$OUT"/abl_after)"
echo "load: $(cat /proc/loadavg)"
python benchmarks/imagefolder_vs_timm.py --out "$OUT"/ifb --results benchmarks/results.jsonl > "$OUT"/ifb.txt 2>&1
echo "imagefolder rc=$?"
echo "load: $(cat /proc/loadavg)"
echo "not-slow subset: $(t python -m pytest -q -p no:cacheprovider -m 'not slow')"
echo "load after: $(cat /proc/loadavg)"
