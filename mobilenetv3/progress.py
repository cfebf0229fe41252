"""Progress of long work (eval and infer over many images): a tqdm bar with rate and time left when stderr is
a terminal, else a log line every `every` steps (logs, CI, files), so logs are not filled with bars."""
import logging
import sys
import time

logger = logging.getLogger(__name__)


def progress(iterable, total: int, unit: str, enabled: bool = True, every: int = 50):
    """Yield from `iterable` while showing progress; nothing when not `enabled` (e.g. ranks other than 0)."""
    if not enabled:
        yield from iterable
        return
    if sys.stderr.isatty():
        from tqdm import tqdm
        yield from tqdm(iterable, total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)
        return
    start = time.time()
    for index, item in enumerate(iterable, 1):
        yield item
        if index % every == 0 and index < total:
            elapsed = time.time() - start
            left = elapsed / index * (total - index)
            logger.info(f"{index}/{total} {unit}es, {elapsed:.0f} s, about {left:.0f} s left")
