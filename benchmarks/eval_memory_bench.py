"""The memory ablation, into docs/benchmarks.md (docs/method.md §12).

    python -m benchmarks.eval_memory_bench [--config configs/eval_memory/copy_readout.yaml] [--set K=V ...]
        [--write-docs]

Runs ``mirage eval-memory`` with the given config and overrides (each run writes its own docs
section, keyed by the config's name and overrides) and prints its Markdown table: fidelity to the
ground truth on revisit frames (pixels and latents), self-consistency, coverage, the seconds of the
memory operations against a chunk without memory, cache bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from benchmarks._measure import write_docs_section

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"


def main(argv: list[str] | None = None) -> int:
    from jobs.config import EvalMemoryConfig
    from jobs.eval_memory import run_eval_memory
    from mirage_model.config import load_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "eval_memory" / "copy_readout.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--write-docs", action="store_true", help=f"update {DOCS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    cfg = load_config(EvalMemoryConfig, args.config, {}, args.overrides)
    summary = run_eval_memory(cfg)
    config_name = Path(args.config).resolve().relative_to(ROOT)
    shown = [o for o in args.overrides if not o.startswith("mlflow.")]  # where runs are logged: not the result
    command = " ".join(["mirage eval-memory --config", str(config_name), *(f"--set {o}" for o in shown)])
    body = "\n".join([f"### `{command}`", "", f"2-core CPU machine, {summary['wall_s']:.0f} s.", "",
                      Path(summary["markdown"]).read_text().rstrip()])
    print(body)
    if args.write_docs:
        key = "eval-memory:" + hashlib.sha1(command.encode()).hexdigest()[:8]
        write_docs_section(DOCS, key, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
