"""Terminal output: one rich console and the metrics table every command prints."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    """``warning: <message>`` on one line (not wrapped: paths stay copyable)."""
    from rich.markup import escape

    console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def metrics_table(metrics: dict[str, dict], title: str = "accuracy") -> Table:
    """A table of acc and acc_norm per set, each with its Wilson 95% interval."""
    table = Table(title=title)
    for col in ("set", "n", "acc", "95% CI", "acc_norm", "95% CI "):
        table.add_column(col, justify="left" if col == "set" else "right")
    for name, m in metrics.items():
        table.add_row(
            name,
            str(m["n"]),
            f"{m['acc']:.3f}",
            _ci(m.get("acc_ci")),
            f"{m['acc_norm']:.3f}",
            _ci(m.get("acc_norm_ci")),
        )
    return table


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
