"""Every error this package raises on purpose, with when it is raised and the exit code the command line gives it.

The ground floor of the package, with :mod:`run_files`: no torch, transformers or other third-party import
(tests/test_ground_floor.py), so any module, and any program that only reads a run folder, can import it.
`cli.cli` turns each of them into one line on stderr (`error: ...`, no traceback; a bare `--debug` shows it) and
the exit code below (docs/troubleshooting.md). Moved here from `arguments`, `network`, `hub` and `trainer`, which
still export them under their old names.
"""

from __future__ import annotations


__all__ = ["ArgumentError", "HubUnavailableError", "PushError", "TrainingDivergedError"]


class ArgumentError(ValueError):
    """A problem with the user's arguments or input files; the message says what to change. Exit code 2.

    Raised before any weight is loaded or file written wherever that can be known then (flags, recipes, data files,
    model and dataset names, the output folder), and by the Hub steps when the Hub refuses a name or a token.
    """


class HubUnavailableError(RuntimeError):
    """The Hub, or the network to it, failed (not the user's input): one line, exit code 1.

    Raised by `network.hub_step` around a download when the Hub cannot be reached, does not answer in time or
    answers with a server error; the message names the step and how to go on without the Hub.
    """


class PushError(RuntimeError):
    """Publishing failed; the message is one line that says what failed and how to retry the push alone. Exit code 1.

    Raised by `hub.push_run` (a Hub or network error while creating the repo or committing) and by its secret check
    (a file to upload holds the Hub token: nothing is pushed).
    """


class TrainingDivergedError(RuntimeError):
    """The training loss (or a trainable weight) became NaN or infinite; the message names the step and the last good
    checkpoint. Exit code 1. Raised by `PrefixTuningTrainer`; nothing more is saved."""
