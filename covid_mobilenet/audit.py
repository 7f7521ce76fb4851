"""The command ``python -m covid_mobilenet.audit RUN``: the data set's audit, from a finished run (``run/audit.py``)."""
import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covid_mobilenet.audit", description=
                                     "Audit the data set of a finished run: near-duplicates and label conflicts, and "
                                     "whether the frozen backbone's features tell each image's source (results/audit-<data hash>.json).")
    parser.add_argument("run", type=Path, help="a finished run's folder, results/<experiment>/seed-<seed>")
    parser.add_argument("--results-dir", type=Path, help="where to write it (default: the run's results folder)")
    args = parser.parse_args(argv)
    if not (args.run / "metrics.json").is_file():
        print(f"audit: {args.run} holds no metrics.json: name a finished run's folder", file=sys.stderr)
        return 2
    from .analysis.audit_summary import probe_section
    from .run.audit import audit

    path = audit(args.run, results_dir=args.results_dir)
    print(f"wrote {path}")
    print("\n".join(probe_section(json.loads(path.read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
