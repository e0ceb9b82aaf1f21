#!/usr/bin/env bash
# The regime benches of benchmarks/regimes.md, one torch thread pinned to one core each:
#   bash benchmarks/regimes/run.sh 0 fashion clean noise-0.2 ...   (core 0)
#   bash benchmarks/regimes/run.sh 1 fashion duplicates ...        (core 1)
#   bash benchmarks/regimes/run.sh 1 fashion-reference noise-0.4 ...  (RHO-LOSS, Rho-1)
#   bash benchmarks/regimes/run.sh 0 speech clean                    (benchmarks/speech.md)
# Each bench writes benchmarks/regimes/<task>/<regime>/; --resume continues one that
# was interrupted (and rewrites its report from its records).
set -euo pipefail
cd "$(dirname "$0")/../.."
core=$1 task=$2
shift 2
export OMP_NUM_THREADS=1
FASHION=(--dataset fashion-mnist --train-size 20000 --test-size 5000 --epochs 5
  --methods full,srs:0.3,infobatch,selective-backprop,sift,sift-entropy,random-keep
  --matched --frontier 0.2,0.4,0.6,0.8,1 --seeds 0,1,2 --quiet)
# Masked-LM with the default decaying schedule (step: lr x0.1 at 50 % and 75 % of the run).
SHAKESPEARE=(--dataset shakespeare --train-size 3200 --test-size 512 --epochs 5 --batch-size 64
  --optimizer adam --methods full,sift:0.5,random-keep:0.5,selective-backprop:3
  --matched --frontier 0.25,0.5,0.75,1 --seeds 0,1,2 --quiet)
# The reference-model methods, each against full data run again beside them (the same
# machine and session: CPU times are compared). RHO-LOSS at 0.3 (candidate batches of 3
# training batches) and at the paper's 0.1 (of 10).
FASHION_REFERENCE=(--dataset fashion-mnist --train-size 20000 --test-size 5000 --epochs 5
  --methods full,rho-loss:0.3,rho-loss:0.1
  --matched --frontier 0.2,0.4,0.6,0.8,1 --seeds 0,1,2 --quiet)
# The same with Adam (lr 1e-3), the optimizer the RHO-LOSS paper trains with: at lr 0.05
# SGD the 10 % of highest reducible loss diverges in the first epoch.
FASHION_REFERENCE_ADAM=(--dataset fashion-mnist --train-size 20000 --test-size 5000 --epochs 5
  --optimizer adam --methods full,rho-loss:0.3,rho-loss:0.1
  --matched --frontier 0.2,0.4,0.6,0.8,1 --seeds 0,1,2 --quiet)
# Two follow-ups: the twin layout (no holdout lost, twice the reference training), and
# Rho-1 with a reference trained up to 30 epochs (at 10 it was still improving).
FASHION_TWIN=(--dataset fashion-mnist --train-size 20000 --test-size 5000 --epochs 5
  --methods full,rho-loss:0.3/reference=twin
  --matched --frontier 0.2,0.4,0.6,0.8,1 --seeds 0,1,2 --quiet)
SHAKESPEARE_LONG_REFERENCE=(--dataset shakespeare --train-size 3200 --test-size 512 --epochs 5
  --batch-size 64 --optimizer adam --methods full,rho1:0.6/ref_epochs=30
  --matched --frontier 0.25,0.5,0.75,1 --seeds 0,1,2 --quiet)
# RHO-LOSS at the paper's 0.1 with SGD at lr 0.01 (at 0.05 it diverges), clean data.
FASHION_REFERENCE_LR=(--dataset fashion-mnist --train-size 20000 --test-size 5000 --epochs 5
  --methods full,rho-loss:0.1 --set lr=0.01 --matched --seeds 0,1,2 --quiet)
SHAKESPEARE_REFERENCE=(--dataset shakespeare --train-size 3200 --test-size 512 --epochs 5
  --batch-size 64 --optimizer adam --methods full,rho-loss:0.5,rho1:0.6
  --matched --frontier 0.25,0.5,0.75,1 --seeds 0,1,2 --quiet)
# speech-kws (benchmarks/speech.md): every method the SRS, SIFT and StochGradAdam papers
# compare, and Adam, StochGradAdam's own baseline (at Adam's lr, 1e-3; the rest SGD).
SPEECH=(--dataset speech-kws --epochs 5
  --methods full,srs:0.3,rs2:0.3,infobatch,sift,selective-backprop,adam,stochgradadam
  --matched --frontier 0.2,0.4,0.6,0.8,1 --seeds 0,1,2 --quiet)
# SRS against full data over 20 epochs, nearer convergence, as in the paper's runs.
SPEECH_LONG=(--dataset speech-kws --epochs 20 --methods full,srs:0.3 --matched
  --seeds 0,1,2 --quiet)
# The same task under a data regime, with the data-selection methods only.
SPEECH_REGIMES=(--dataset speech-kws --epochs 5
  --methods full,srs:0.3,infobatch,sift,selective-backprop
  --matched --frontier 0.2,0.4,0.6,0.8,1 --seeds 0,1,2 --quiet)
for regime in "$@"; do
  case $regime in
    clean) extra=() ;;
    noise-0.2) extra=(--label-noise 0.2) ;;
    noise-0.4) extra=(--label-noise 0.4) ;;
    confusion-0.3) extra=(--label-noise 0.3/kind=confusion) ;;
    duplicates-200x50) extra=(--duplicates 200/copies=50) ;;
    duplicates-200x50-jitter2) extra=(--duplicates 200/copies=50/jitter=2) ;;
    long-tail-50) extra=(--long-tail 50) ;;
    off-target-0.5) extra=(--off-target 0.5) ;;
    *) echo "unknown regime $regime" >&2; exit 2 ;;
  esac
  case $task in
    fashion) args=("${FASHION[@]}") ;;
    shakespeare) args=("${SHAKESPEARE[@]}") ;;
    fashion-reference) args=("${FASHION_REFERENCE[@]}") ;;
    fashion-reference-adam) args=("${FASHION_REFERENCE_ADAM[@]}") ;;
    fashion-reference-twin) args=("${FASHION_TWIN[@]}") ;;
    shakespeare-reference-long) args=("${SHAKESPEARE_LONG_REFERENCE[@]}") ;;
    fashion-reference-lr) args=("${FASHION_REFERENCE_LR[@]}") ;;
    shakespeare-reference) args=("${SHAKESPEARE_REFERENCE[@]}") ;;
    speech) args=("${SPEECH[@]}") ;;
    speech-regimes) args=("${SPEECH_REGIMES[@]}") ;;
    speech-long) args=("${SPEECH_LONG[@]}") ;;
    *) echo "unknown task $task" >&2; exit 2 ;;
  esac
  out=benchmarks/regimes/$task/$regime
  resume=(); [ -e "$out/bench.json" ] && resume=(--resume)
  taskset -c "$core" .venv/bin/sievetrain bench "${args[@]}" "${extra[@]}" "${resume[@]}" --out "$out"
done
