"""The one exception type for mistakes a user can fix; scripts print its message as one line."""
import re


class UserError(Exception):
    """Bad input, flags, files or environment; the message names the culprit and what to do."""


class EveryRankError(UserError):
    """A UserError every rank of a distributed job raises alike (its cause was shared by a collective):
    each rank can exit normally, none waits for another. `every_rank_says_it`: each rank prints its own
    message (they name different ranks' views), else rank 0 alone."""
    every_rank_says_it = True


class MachineError(EveryRankError):
    """An EveryRankError caused by one machine's set-up (its GPU driver, its libraries), alike on all of that
    machine's ranks: the first rank of each machine says it; ranks on other machines are ended by the launcher
    when these exit."""
    every_rank_says_it = False


def mindspore_cause(err: BaseException) -> str:
    """The cause a MindSpore RuntimeError gives, in one line.

    Its first line is a summary, whose last sentence is dropped when it only announces a list of possible
    reasons; the cause itself (a library that did not load, ...) is often in the sections below it
    ("- Device load error message:" between dashed lines), so their lines follow, but not the C++ call stack.
    """
    summary, *sections = re.split(r"\n-{8,}\n- (.*)\n-{8,}\n", str(err).strip())
    cause = (summary.strip().splitlines() or [type(err).__name__])[0].strip()
    if cause.endswith(":") and ". " in cause:
        cause = cause[:cause.rindex(". ") + 1]
    details = [line.strip() for title, body in zip(sections[::2], sections[1::2]) if not title.startswith("C++")
               for line in body.splitlines() if line.strip()]
    return " ".join([cause, "; ".join(details)]) if details else cause
