"""CPU speed of MobileNetV3-Small/Large: ours against the same network in PyTorch, in MindSpore and in ONNX Runtime.

Examples:
  python benchmarks/benchmark.py                                  # small and large, batch 1 and 32, 224 px
  python benchmarks/benchmark.py --models small --batch_sizes 1 8 64 --json bench.json
  python benchmarks/benchmark.py --backends onnxruntime --threads 1  # the ONNX Runtime comparison only
  python benchmarks/benchmark.py --backends int8 --threads 1        # int8 against float32, both in ONNX Runtime
  python benchmarks/benchmark.py --backends int8 openvino openvino_bf16 openvino_int8 --threads 2  # every deployment path
  python benchmarks/benchmark.py --quick --json bench.json         # smoke run: small, batch 1 and 8, short windows
  python benchmarks/benchmark.py --data_only --json data.json      # the data pipelines alone

Comparisons, each a row group of the table (column "backend"); the first two run by default:
  mindspore    our MindSpore model (GRAPH mode) against the PyTorch eager twin: training throughput
               (forward, loss, backward, Momentum update), inference throughput, batch-1 latency (median
               and p90), first-step (compile) time, peak RSS and parameter count;
  onnxruntime  our ONNX export (BatchNorm folded, HardSwish fused) against the PyTorch twin exported by
               torch.onnx.export, both in ONNX Runtime with the same threads: the inference figures, and
               one line per model comparing the two graphs' op counts;
  int8         our ONNX export quantized to int8 (as scripts/export.py --quantize int8 does) against the
               float32 export, both in ONNX Runtime: the inference figures (--backends int8).
  openvino     OpenVINO (--backend openvino) on our float32 export against ONNX Runtime on the same file;
  openvino_bf16  the same, OpenVINO computing in bf16 (--precision bf16; f32 on CPUs without native bf16);
  openvino_int8  OpenVINO on the int8 file shaped for it (export.py --quantize int8 --backend openvino) against
               ONNX Runtime on the float32 export (pip install openvino).
Each row gives ours, the baseline and the ratio ours/baseline. The baselines need PyTorch (pip install
torch==2.13.0), the onnxruntime comparison onnxruntime and onnx (pip install onnxruntime onnx); what is
missing is left out with a NOTE. With the mindspore comparison, the data pipelines follow: ours,
MindSpore's C++ pipeline (as its docs build it, normalised float32 CHW, and stopped at uint8 HWC, what ours
delivers), and a PyTorch DataLoader, train and eval transforms, 1 to --num_parallel_workers workers:
img/s, CPU ms per image and peak PSS of each (--data_only: those alone). --json writes every
figure with its timed windows, both graphs' op-type histograms, the machine (load average at start and
end), versions and settings. On a shared machine, repeat runs and compare.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed: import it from the checkout
from benchmarks import harness, report  # noqa: E402
from mobilenetv3.cli import run_cli  # noqa: E402  (applies the process defaults before main runs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(harness.MODELS), help="default: small large "
                        "(--quick: small)")
    parser.add_argument("--batch_sizes", nargs="+", type=int, help="default: 1 32 (--quick: 1 8)")
    parser.add_argument("--backends", nargs="+", choices=harness.BACKENDS,
                        help=f"comparisons to run; default: {' '.join(harness.DEFAULT_BACKENDS)}")
    parser.add_argument("--image_size", type=int, help="default: 224")
    parser.add_argument("--threads", type=int, help="compute threads of every side; default: one per CPU")
    parser.add_argument("--num_parallel_workers", type=int,
                        help="the most data pipeline workers measured (from 1); default: one per CPU")
    parser.add_argument("--windows", type=int, help="timed windows per figure; default 7 (--quick: 3)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter windows: a smoke test")
    parser.add_argument("--data_only", action="store_true", help="measure the data pipelines alone, no model")
    parser.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    args = parser.parse_args(argv)
    chosen = {k: v for k, v in vars(args).items() if v is not None and k not in ("quick", "json")}
    chosen["data_only"] = args.data_only
    try:
        settings = (harness.Settings.quick_settings if args.quick else harness.Settings)(**chosen)
    except ValueError as err:
        parser.error(str(err))
    measured = harness.run(settings)
    print(report.format_table(measured))
    if args.json:
        report.save_json(measured, args.json)
        print(f"report written to {args.json}")


if __name__ == "__main__":
    run_cli(main)
