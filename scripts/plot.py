"""Draw training curves from the metrics.jsonl of one or more runs into one PNG.

Examples:
  python scripts/plot.py ./mobilenet_v3                       # writes ./mobilenet_v3/curves.png
  python scripts/plot.py runs/momentum runs/rmsprop --output compare.png

Top: mean training loss and, where the run validated (--eval_interval), validation Top-1 against epoch;
bottom: the learning rate at the end of each epoch. Runs are overlaid, named by their folder.
A line that cannot be read (cut short by a run killed while writing it, bytes that are not UTF-8, no
numbers for epoch, loss and lr) is skipped, and a warning names the file and the line numbers.
Needs matplotlib: pip install -e ".[plot]".
"""
import argparse
import json
import sys
from pathlib import Path

from mobilenetv3.cli import run_cli
from mobilenetv3.errors import UserError
from mobilenetv3.training.run_record import METRICS_FILE

PLOTTED = ("epoch", "loss", "lr")  # every line needs these; val_top1 is drawn where present


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def readable_lines(path: Path) -> tuple:
    """(the lines of the metrics.jsonl at `path` that can be drawn, the numbers of those that cannot).

    Read as bytes, line by line, so that one damaged line costs that line alone."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], []
    except OSError as err:
        raise UserError(f"{path} cannot be read ({err.strerror}); check its permissions") from None
    lines, skipped = [], []
    for number, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError both are
            line = None
        if isinstance(line, dict) and all(is_number(line.get(key)) for key in PLOTTED) and \
                is_number(line.get("val_top1", 0)):
            lines.append(line)
        else:
            skipped.append(number)
    return lines, skipped


def plot(runs: dict, output: Path):
    try:
        import matplotlib
    except ImportError:
        raise UserError('plot.py needs matplotlib: pip install -e ".[plot]" (or pip install matplotlib)') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 5), height_ratios=(2, 1))
    accuracy = top.twinx()
    for index, (name, lines) in enumerate(runs.items()):
        colour = f"C{index}"
        epochs = [line["epoch"] for line in lines]
        # Markers: a run of one epoch is one point, which a line alone does not draw.
        top.plot(epochs, [line["loss"] for line in lines], color=colour, marker="o", markersize=3,
                 label=f"{name}: train loss")
        validated = [line for line in lines if "val_top1" in line]
        if validated:
            accuracy.plot([line["epoch"] for line in validated], [line["val_top1"] for line in validated],
                          color=colour, linestyle="--", marker="o", label=f"{name}: val Top-1")
        bottom.plot(epochs, [line["lr"] for line in lines], color=colour, marker="o", markersize=3, label=name)
    top.set_ylabel("train loss")
    if accuracy.lines:
        accuracy.set_ylabel("validation Top-1")
    else:  # no run validated (--eval_interval 0): no empty axis
        accuracy.set_axis_off()
    bottom.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1))
    first, last = min(line["epoch"] for lines in runs.values() for line in lines), \
        max(line["epoch"] for lines in runs.values() for line in lines)
    margin = max(0.5, 0.05 * (last - first))  # whole epochs on the axis, even for a run of one
    bottom.set_xlim(first - margin, last + margin)
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("epoch")
    handles = top.get_legend_handles_labels()[0] + accuracy.get_legend_handles_labels()[0]
    top.legend(handles, [h.get_label() for h in handles], fontsize="small")
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=80)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a training run's ckpt_save_dir")
    parser.add_argument("--output", help="PNG to write (default: RUN_DIR/curves.png for one run, ./curves.png)")
    args = parser.parse_args(argv)
    runs = {}
    for directory in map(Path, args.run_dirs):
        path = directory / METRICS_FILE
        lines, skipped = readable_lines(path)
        if not lines and not skipped:
            raise UserError(f"{path} not found or empty: pass the ckpt_save_dir of a run that finished at least one "
                            "epoch")
        numbers = f"line{'s' * (len(skipped) > 1)} {', '.join(map(str, skipped[:10]))}" + \
            (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        why = "cut short, not UTF-8, or without numbers for epoch, loss and lr"
        if not lines:
            raise UserError(f"{path}: no line can be drawn ({numbers}: {why}); pass the ckpt_save_dir of another run")
        if skipped:
            print(f"warning: {path}: skipped {numbers} ({why}); plotted the other {len(lines)}", file=sys.stderr)
        runs[directory.resolve().name if directory.name in ("", ".") else directory.name] = lines
    if len(runs) < len(args.run_dirs):
        raise UserError("two runs have the same folder name; give them distinct names (the legend uses them)")
    output = Path(args.output or (Path(args.run_dirs[0]) / "curves.png" if len(runs) == 1 else "curves.png"))
    if output.suffix.lower() != ".png":
        raise UserError(f"--output {output}: the plot is a PNG; name a file ending in .png")
    plot(runs, output)
    print(f"curves of {len(runs)} run(s) written to {output}")


if __name__ == "__main__":
    run_cli(main, runs_graphs=False)
