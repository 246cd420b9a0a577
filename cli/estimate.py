"""``rllc estimate …``: one LLC point (deep linear network now; model components later)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Estimate one (refined) LLC.", no_args_is_help=True)
