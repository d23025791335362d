"""``rtlkit``: one command for the kit, with a subcommand per job (``rtlkit COMMAND --help`` for each).

    rtlkit figures --profile quick            # run the notebooks headless, regenerate figures/
    rtlkit plan --profile full                # what a suite will train and evaluate, without running it
    rtlkit card --list                        # the cached runs a report card can be made for
    rtlkit findings --readme README.md        # the verdicts from the figure CSVs
    rtlkit data fashion-mnist mnist-5k        # check that datasets load (--download fetches them)
    rtlkit launch --help                      # a suite over several processes or GPUs
    rtlkit run --help                         # one cached run
    rtlkit reproduce --only 01 02             # does a fresh clone reproduce the committed figures?

Each subcommand is the module of the same name (``rtlkit figures`` and the others stay as
aliases); ``reproduce`` is the repository's ``bench/reproduce.py``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# subcommand -> (module, one line of help)
COMMANDS = {
    "figures": ("rtlkit.suite.figures", "run the notebooks headless (papermill) and regenerate figures/"),
    "plan": ("rtlkit.suite.plan", "what a suite will train and evaluate, and its cost, without running it"),
    "card": ("rtlkit.suite.card", "a report card: the attack cascade and the masking checks for one model"),
    "findings": ("rtlkit.suite.findings", "the verdicts (findings.csv / .md) from the figure CSVs"),
    "data": ("rtlkit.core.data", "the datasets: which are on this machine, where they come from"),
    "launch": ("rtlkit.suite.launch", "a suite over several processes or GPUs"),
    "run": ("rtlkit.suite.run", "one cached run (train, evaluate, certify)"),
    "reproduce": ("bench.reproduce", "does a fresh clone reproduce the committed figures' CSVs?"),
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rtlkit", description="The robust-transfer-learning study kit, one subcommand per job.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="rtlkit COMMAND --help gives each command's options.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return ap


def module_of(command: str):
    """The module behind ``command`` (``bench.reproduce`` from the repository the package lives in)."""
    name = COMMANDS[command][0]
    if name.startswith("bench."):
        repo = str(Path(__file__).resolve().parents[1])   # bench/ is the repository's, not the installed package's
        if repo not in sys.path:
            sys.path.insert(0, repo)
    return importlib.import_module(name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser()
    if not argv or argv[0] in ("-h", "--help"):
        ap.print_help()
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        ap.error(f"unknown command {argv[0]!r}; one of {', '.join(COMMANDS)}")
    return int(module_of(argv[0]).main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
