"""Which warnings lamm-cl shows: one rule for the command line, the Python API and sweep workers.

Third-party warnings (Avalanche's qpsolvers notice at import, torch's and open_clip's deprecations,
"no pretrained weights loaded" for a random-weight model) are not for the user: lamm-cl says what
matters itself, and an error must stay one line. ``-W`` / ``PYTHONWARNINGS`` (``sys.warnoptions``)
brings them back, all but the few that lamm-cl always answers itself.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Iterator

# hidden even with -W: lamm-cl says these itself (the random-weights note) or they are noise in every run
_ALWAYS_HIDDEN = (".*No loggers specified.*", ".*[Nn]o pretrained weights loaded.*", ".*random weights.*")


def hide_third_party_warnings() -> None:
    """Apply the rule to this process's warning filters (for a worker that never returns to a caller)."""
    if not sys.warnoptions:
        warnings.simplefilter("ignore")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for message in _ALWAYS_HIDDEN:
        warnings.filterwarnings("ignore", message=message)


@contextlib.contextmanager
def quiet_third_party_warnings() -> Iterator[None]:
    """The rule inside the block; the caller's own filters are back afterwards (``lamm-cl``, ``lamm_cl.run``)."""
    with warnings.catch_warnings():
        hide_third_party_warnings()
        yield
