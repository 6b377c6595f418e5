"""Side by side: the browser editor's class-locked slider step (``semdir-edit bench``'s ``ui_edit_locked_ms``) with
the lock holding the shared classifier alone or both classifiers, and with the walk's last pass shown as is or
rendered again, alternately in one process so that the machine's drift hits every candidate alike.

    .venv/bin/python scripts/compare_slider.py [--weights weights/fashion_mnist] [--rounds 2] [--repeats 50] \
        [--hold shared both] [--reuse on off]
"""

from __future__ import annotations

import argparse
import itertools

import torch

from semdir_edit.editor import Editor
from semdir_edit.evaluation.bench import slider_edit_ms


class _Rendering(Editor):
    """The editor with its remembered last pass forgotten after every walk: each step renders its end again."""

    def _locked_walk(self, *args, **kwargs) -> torch.Tensor:
        codes = super()._locked_walk(*args, **kwargs)
        self._last_pass = None
        return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights/fashion_mnist")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--hold", nargs="+", choices=["shared", "both"], default=["both"])
    parser.add_argument("--reuse", nargs="+", choices=["on", "off"], default=["on", "off"])
    args = parser.parse_args()
    editors = {"on": Editor.from_pretrained(args.weights, "cpu"),
               "off": _Rendering.from_pretrained(args.weights, "cpu")}
    candidates = list(itertools.product(args.hold, args.reuse))
    times: dict[tuple[str, str], list[float]] = {c: [] for c in candidates}
    for _ in range(args.rounds):
        for hold, reuse in candidates:
            editor = editors[reuse]
            editor._lock = editor.C if hold == "shared" else None   # None: the property picks the pair again.
            times[(hold, reuse)].append(slider_edit_ms(editor, repeats=args.repeats, keep_class=True))
    print("| the lock holds | last pass shown as is | class-locked slider step, ms (one figure per round) |")
    print("|---|---|---|")
    for (hold, reuse), values in times.items():
        print(f"| {hold} | {reuse} | {' / '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
