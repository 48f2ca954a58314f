"""``python -m afr.paper``: regenerate ``paper/generated/`` (numbers, tables, figure macros) and the architecture
figure from the committed results; prints one line. ``make paper`` then runs LaTeX."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from afr.paths import MissingResourceError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m afr.paper", description=__doc__.splitlines()[0])
    parser.add_argument("--results", help="results folder to read (default: results/ or $AFR_RESULTS)")
    parser.add_argument("--figures", help="figures folder (default: figures/ or $AFR_FIGURES)")
    parser.add_argument("--out", help="output folder (default: paper/generated beside the results folder)")
    parser.add_argument("--no-architecture", action="store_true", help="do not redraw figures/architecture.pdf")
    args = parser.parse_args(argv)
    from afr.paper.generate import write_generated

    try:
        paper = write_generated(args.results, args.figures, args.out, architecture=not args.no_architecture)
    except (MissingResourceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"paper: {len(paper.numbers)} numbers, {sum(name.startswith('tables/') for name in paper.files)} tables, "
          f"{sum(name.startswith('supplementary/') for name in paper.files)} supplementary tables; "
          f"{len(paper.written)} file(s) written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
