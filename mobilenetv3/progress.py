"""Progress of long work (eval and infer over many images): a tqdm bar with rate and time left when stderr is
a terminal, else a plain line every `every` steps (logs, CI, files), so logs are not filled with bars."""
import sys
import time


def progress(iterable, total: int, unit: str, enabled: bool = True, every: int = 50, stream=None):
    """Yield from `iterable` while showing progress on `stream` (stderr); nothing when not `enabled`
    (e.g. ranks other than 0)."""
    stream = stream or sys.stderr
    if not enabled:
        yield from iterable
        return
    if stream.isatty():
        from tqdm import tqdm
        yield from tqdm(iterable, total=total, unit=unit, file=stream, dynamic_ncols=True, leave=False)
        return
    start = time.time()
    for index, item in enumerate(iterable, 1):
        yield item
        if index % every == 0 and index < total:
            elapsed = time.time() - start
            print(f"{index}/{total} {unit}es, {elapsed:.0f} s, about {elapsed / index * (total - index):.0f} s left",
                  file=stream, flush=True)
