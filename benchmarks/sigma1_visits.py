"""The cheap tier's σ₁ on a training GPT, visit after visit: how far off, how many steps.

    .venv/bin/python benchmarks/sigma1_visits.py [--write docs/metrics.md]

The GPT-style model of benchmarks/overhead.py (4 blocks, width 256, 25 weight matrices)
trains with AdamW on random tokens; every `gap` steps each matrix's σ₁ is found by Lanczos from
its previous visit's vector (the first vector: 30 steps from a random start), as the cheap tier
does: with the CPU's residual stopping test (`tol`, at least 3 steps, at most 30), with the same
test after at least 4 steps (the rule until 2026-12-07), and with 12 fixed steps (the rule
before that), each rule carrying its own vectors. The error is σ₁²
against float64 `matrix_norm(ord=2)`, over 5 visits × 25 matrices per setting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from rich.progress import Progress
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "agent"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from doc_sections import write_section
from overhead import make_gpt
from symwatch_agent.measure import spectra
from symwatch_agent.measure.indicators import SIGMA1_TOL

VISITS = 5


class _Steps(torch.overrides.TorchFunctionMode):
    """Counts Lanczos steps: each makes one product u·W with the matrix itself."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w, self.steps = w, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.bmm and len(args) > 1 and args[1] is self.w:
            self.steps += 1
        return func(*args, **(kwargs or {}))


def run(lr: float, gap: int) -> dict[str, tuple[list[float], list[int]]]:
    torch.manual_seed(0)
    model = make_gpt(256, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    batch, target = torch.randint(0, 256, (4, 32)), torch.randint(0, 256, (4, 32))
    mats = [m for m in model.modules() if isinstance(m, nn.Linear)]
    rules = {"residual test (at least 3 steps: the default)": dict(steps=30, tol=SIGMA1_TOL),
             "residual test, at least 4 steps (before)": dict(steps=30, tol=SIGMA1_TOL, least=4),
             "12 fixed steps": dict(steps=12)}
    vecs = {}
    for i, m in enumerate(mats):
        w = m.weight.detach()[None]
        _, v = spectra.lanczos_sigma1(w, torch.randn(1, w.shape[2]), 30)
        for rule in rules:
            vecs[rule, i] = v
    found: dict[str, tuple[list[float], list[int]]] = {rule: ([], []) for rule in rules}
    for _ in range(VISITS):
        for _ in range(gap):
            loss = nn.functional.cross_entropy(model(batch).flatten(0, -2), target.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
        for i, m in enumerate(mats):
            w = m.weight.detach()[None].clone()
            exact = torch.linalg.matrix_norm(w[0].double(), 2).item() ** 2
            for rule, kw in rules.items():
                with _Steps(w) as count:
                    s1, vecs[rule, i] = spectra.lanczos_sigma1(w, vecs[rule, i], **kw)
                found[rule][0].append(abs(s1.item() ** 2 / exact - 1))
                found[rule][1].append(count.steps)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, help="replace the `sigma1-visits` section of this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = [(1e-4, 50), (1e-3, 50), (1e-4, 300), (1e-3, 300)]
    rows = ["| AdamW lr | steps between visits | rule | σ₁² error: median | 95th percentile | worst | Lanczos steps: mean | most |",
            "|---|---|---|---|---|---|---|---|"]
    with Progress(transient=True) as progress:
        task = progress.add_task("training and visiting", total=len(settings))
        for lr, gap in settings:
            for rule, (errs, steps) in run(lr, gap).items():
                errs = sorted(errs)
                rows.append(f"| {lr:g} | {gap} | {rule} | {errs[len(errs) // 2]:.1e} | "
                            f"{errs[int(0.95 * len(errs))]:.1e} | {errs[-1]:.1e} | "
                            f"{sum(steps) / len(steps):.1f} | {max(steps)} |")
            progress.advance(task)
    text = ("```bash\n.venv/bin/python benchmarks/sigma1_visits.py --write docs/metrics.md\n```\n\n"
            + "\n".join(rows))
    print(text)
    if args.write:
        write_section(args.write, "sigma1-visits", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
