#!/usr/bin/env bash
# One-command demo: train MobileNetV3-Small from scratch on Fashion-MNIST on a CPU, evaluate it on the
# 10,000 test images, predict a few of them, all in about 10 minutes on 2 cores. No ImageNet, no GPU.
#
#   bash scripts/quickstart.sh                   # the demo (configs/fashion_mnist_demo.yaml)
#   bash scripts/quickstart.sh --smoke           # CI: 300 + 100 images, 1 epoch, no accuracy threshold
#   bash scripts/quickstart.sh --idx_dir ~/fashion-mnist --output /tmp/demo --np 1
#
# Options (or the environment variable in brackets):
#   --output DIR    checkpoints, logs, metrics, predictions      [QUICKSTART_OUTPUT] ./demo_output
#                   (--smoke: ./demo_output_smoke)
#   --data_dir DIR  where the PNG tree is written                [QUICKSTART_DATA]   ./data/fashion_mnist
#                   (--smoke: ./data/fashion_mnist_smoke)
#   --idx_dir DIR   the 4 Fashion-MNIST IDX files, plain or .gz  [QUICKSTART_IDX_DIR]
#                   (default: Debian's dataset-fashion-mnist, installed here when possible)
#   --np N          training processes; N > 1 needs mpirun       [QUICKSTART_NP]     2 if mpirun works, else 1
#   --smoke         tiny run for CI                              [QUICKSTART_SMOKE=1]
#
# Python: an active virtual or conda environment, else ./.venv, created from $PYTHON (default python3; CPython
# 3.10-3.12, the versions mindspore 2.10 has wheels for) and reused; nothing is installed into a system Python.
#
# Every step is skipped when already done: the package is installed once, the PNG tree is written
# once, and training resumes from (or stops at) the last checkpoint in OUTPUT/checkpoints; delete
# that folder to train again. Exit status: 0 done, 1 a step failed or accuracy below the threshold,
# 2 a usage or setup problem (the message says what to do).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="$REPO/configs/fashion_mnist_demo.yaml"
SMOKE="${QUICKSTART_SMOKE:-0}"
OUTPUT="${QUICKSTART_OUTPUT:-}"
DATA="${QUICKSTART_DATA:-}"
IDX_DIR="${QUICKSTART_IDX_DIR:-}"
NP="${QUICKSTART_NP:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --output|--data_dir|--idx_dir|--np)
            [ $# -ge 2 ] || die "$1 needs a value (see --help)"
            case "$1" in
                --output) OUTPUT="$2" ;; --data_dir) DATA="$2" ;; --idx_dir) IDX_DIR="$2" ;; --np) NP="$2" ;;
            esac
            shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (options: --output, --data_dir, --idx_dir, --np, --smoke, --help)" ;;
    esac
done
case "$SMOKE" in 0|1) ;; *) die "QUICKSTART_SMOKE must be 0 or 1, got '$SMOKE'" ;; esac
if [ "$SMOKE" = 1 ]; then
    OUTPUT="${OUTPUT:-./demo_output_smoke}"; DATA="${DATA:-./data/fashion_mnist_smoke}"
    # 30 + 10 images per class, 1 epoch (4 steps with 2 processes, 9 with one): checks that every stage runs,
    # not that it learns.
    PREPARE_ARGS=(--per_class_train 30 --per_class_val 10)
    TRAIN_ARGS=(--epoch_size 1 --log_interval 3)
    MIN_TOP1=""
else
    OUTPUT="${OUTPUT:-./demo_output}"; DATA="${DATA:-./data/fashion_mnist}"
    # Images per class and epochs are sized so that the whole demo fits 10 minutes on 2 cores.
    PREPARE_ARGS=(--per_class_train 1500)
    TRAIN_ARGS=()
    MIN_TOP1=0.85
fi

START=$SECONDS
stage_start=$SECONDS
stage() { stage_start=$SECONDS; echo; echo "==> [$1/5] $2"; }
stage_done() { echo "    ($((SECONDS - stage_start)) s)"; }

stage 1 "Install"
. "$REPO/scripts/python_env.sh"
project_python "$REPO" plot mindspore matplotlib || exit $?
IDX_ARGS=()
if [ -n "$IDX_DIR" ]; then
    IDX_ARGS=(--idx_dir "$IDX_DIR")
    echo "Fashion-MNIST IDX files: $IDX_DIR"
elif (cd "$REPO/scripts" && "$PYTHON" -c "from fashion_mnist import find_idx_files; find_idx_files()") 2>/dev/null; then
    echo "Fashion-MNIST is installed (Debian package dataset-fashion-mnist)"
else
    echo "installing Fashion-MNIST: apt-get install dataset-fashion-mnist"
    apt_install dataset-fashion-mnist || die "Fashion-MNIST is missing and cannot be installed from here (needs root or password-less sudo).
Either run:  sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu; puts it in /usr/share/datasets/fashion-mnist)
or download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and
t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist (folder data/fashion)
into a folder DIR and run:  bash scripts/quickstart.sh --idx_dir DIR"
fi
if ! command -v mpirun >/dev/null && [ "${NP:-2}" != 1 ]; then
    echo "installing OpenMPI (data-parallel training with mpirun): apt-get install openmpi-bin"
    apt_install openmpi-bin || echo "note: OpenMPI cannot be installed from here (needs root or password-less sudo):" \
        "training runs as one process; sudo apt-get install openmpi-bin for data-parallel runs"
fi
mpi_works() { command -v mpirun >/dev/null && "$PYTHON" -c "from mpi4py import MPI" 2>/dev/null; }
CPUS="$("$PYTHON" -c "import os; print(len(os.sched_getaffinity(0)))")"
if [ -z "$NP" ]; then  # two processes finish first on a CPU with 2 or more cores (see README, the demo)
    if mpi_works && [ "$CPUS" -ge 2 ]; then NP=2; else NP=1; fi
fi
case "$NP" in ''|*[!0-9]*|0) die "--np must be a whole number >= 1, got '$NP'" ;; esac
if [ "$NP" = 1 ]; then
    LAUNCH=("$PYTHON")
    TRAIN_ARGS+=(--run_distribute false)
    if ! mpi_works; then how="no mpirun/mpi4py (apt-get install openmpi-bin for data-parallel)"
    elif [ "$CPUS" -lt 2 ]; then how="1 CPU"; else how="--np 1"; fi
    echo "training: 1 process ($how)"
else
    mpi_works || die "--np $NP needs OpenMPI's mpirun and mpi4py: apt-get install openmpi-bin; $PYTHON -m pip install mpi4py"
    LAUNCH=(mpirun --bind-to none --oversubscribe -n "$NP")
    [ "$(id -u)" = 0 ] && LAUNCH+=(--allow-run-as-root)
    LAUNCH+=("$PYTHON")
    echo "training: $NP data-parallel processes (${LAUNCH[*]} ...)"
fi
stage_done

stage 2 "Prepare data: Fashion-MNIST IDX -> $DATA/{train,val}/<class>/*.png"
"$PYTHON" "$REPO/scripts/prepare_fashion_mnist.py" --output "$DATA" "${PREPARE_ARGS[@]}" "${IDX_ARGS[@]}"
stage_done

stage 3 "Train MobileNetV3-Small ($CONFIG), log: $OUTPUT/train.log"
mkdir -p "$OUTPUT"
if compgen -G "$OUTPUT/checkpoints/*.ckpt" >/dev/null; then
    echo "continuing from the last checkpoint in $OUTPUT/checkpoints (delete that folder to train afresh)"
    TRAIN_ARGS+=(--resume auto)
fi
if [ -s "$OUTPUT/train.log" ]; then  # a rerun appends, after a separator
    echo "===== $(date -u '+%Y-%m-%d %H:%M:%S UTC'): quickstart run again =====" >> "$OUTPUT/train.log"
fi
"${LAUNCH[@]}" "$REPO/scripts/train.py" --config "$CONFIG" --data_url "$DATA" \
    --ckpt_save_dir "$OUTPUT/checkpoints" "${TRAIN_ARGS[@]}" 2>&1 | tee -a "$OUTPUT/train.log"
CHECKPOINT="$(sed -n 's/^last checkpoint: //p' "$OUTPUT/train.log" | tail -n 1)"
[ -n "$CHECKPOINT" ] && [ -f "$CHECKPOINT" ] || { echo "error: training wrote no checkpoint; see $OUTPUT/train.log" >&2; exit 1; }
"$PYTHON" "$REPO/scripts/plot.py" "$OUTPUT/checkpoints" --output "$OUTPUT/curves.png" || echo "note: no curves drawn (see above)"
stage_done

stage 4 "Evaluate $CHECKPOINT on the Fashion-MNIST test images in $DATA/val"
"$PYTHON" "$REPO/scripts/eval.py" --config "$CONFIG" --data_url "$DATA" --pretrained "$CHECKPOINT" \
    --run_distribute false --batch_size 250 --json "$OUTPUT/metrics.json"
TOP1="$("$PYTHON" -c "import json, sys; print(f\"{json.load(open(sys.argv[1]))['top1']:.4f}\")" "$OUTPUT/metrics.json")"
stage_done

stage 5 "Predict: one test image of each of 8 classes, copied to $OUTPUT/infer/"
rm -rf "$OUTPUT/infer"
mkdir -p "$OUTPUT/infer"
class_dirs=("$DATA"/val/*/)  # globs expand sorted; no `| head`, whose SIGPIPE pipefail would count as a failure
for class_dir in "${class_dirs[@]:0:8}"; do
    images=("$class_dir"*.png)
    cp "${images[0]}" "$OUTPUT/infer/$(basename "$class_dir")_$(basename "${images[0]}")"  # named by true class
done
"$PYTHON" "$REPO/scripts/infer.py" --config "$CONFIG" --data_url "$OUTPUT/infer" --pretrained "$CHECKPOINT" \
    --top_k 3 --output "$OUTPUT/predictions.json"
stage_done

echo
echo "==> Done in $((SECONDS - START)) s. Top-1 accuracy $TOP1 on Fashion-MNIST test images (chance: 0.10)."
echo "  checkpoint:  $CHECKPOINT"
echo "  train log:   $OUTPUT/train.log"
echo "  metrics:     $OUTPUT/metrics.json"
echo "  curves:      $OUTPUT/curves.png   (loss and learning rate per epoch; per-epoch figures: $OUTPUT/checkpoints/metrics.jsonl)"
echo "  predictions: $OUTPUT/predictions.json"
case "$PWD/" in  # paths as typed from here: relative inside the repository, else absolute
    "$REPO"/*) HERE="$("$PYTHON" -c "import os, sys; print(os.path.relpath(sys.argv[1]))" "$REPO")/"; HERE="${HERE#./}" ;;
    *) HERE="$REPO/" ;;
esac
PY="$PYTHON"
case "$PYTHON" in "$REPO"/.venv/*) PY="${HERE}${PYTHON#"$REPO"/}" ;; esac
MPIRUN="mpirun --bind-to none -n 2"
[ "$(id -u)" = 0 ] && MPIRUN+=" --allow-run-as-root"
[ "$CPUS" -ge 2 ] || MPIRUN+=" --oversubscribe"
mpi_works && MPI_NOTE="" || MPI_NOTE=" (first: sudo apt-get install openmpi-bin)"
cat <<EOF

Next (each line runs as pasted, with the Python this demo used; or first: source $(dirname "$PY")/activate):
  # evaluate again
  $PY ${HERE}scripts/eval.py --config ${HERE}configs/fashion_mnist_demo.yaml --data_url $DATA --pretrained $CHECKPOINT
  # predict a folder of your images (here the 8 above)
  $PY ${HERE}scripts/infer.py --config ${HERE}configs/fashion_mnist_demo.yaml --data_url $OUTPUT/infer --pretrained $CHECKPOINT
  # export for deployment (MINDIR; for ONNX first: $PY -m pip install onnx)
  $PY ${HERE}scripts/export.py --config ${HERE}configs/fashion_mnist_demo.yaml --pretrained $CHECKPOINT --file_format MINDIR --file_name $OUTPUT/export/mobilenet_v3_small
  # train again with 2 data-parallel processes into another folder$MPI_NOTE; ImageNet on 8 GPUs: README "Training"
  $MPIRUN $PY ${HERE}scripts/train.py --config ${HERE}configs/fashion_mnist_demo.yaml --data_url $DATA --ckpt_save_dir $OUTPUT/retrain
EOF
if [ -n "$MIN_TOP1" ] && ! "$PYTHON" -c "import sys; sys.exit(float(sys.argv[1]) < float(sys.argv[2]))" "$TOP1" "$MIN_TOP1"; then
    echo "error: top-1 $TOP1 is below the $MIN_TOP1 this demo reaches; see $OUTPUT/train.log" >&2
    exit 1
fi
