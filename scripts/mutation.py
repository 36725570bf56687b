"""Mutation testing of the core modules, each against its own test file (``make mutation``).

For every target this copies the package and the tests into ``build/mutation/<name>/``,
writes a small ``pyproject.toml`` that tells mutmut which one file to mutate and which one
test file to run, runs ``mutmut run`` there (one worker, a time cap) and prints the
mutation score: killed mutants / (killed + survived + timed out). The working tree itself
is never modified, so the suite and the service can run while this does.

    python scripts/mutation.py                 # every target
    python scripts/mutation.py vocab bleu      # some of them
    MUTATION_TIME_CAP=900 python scripts/mutation.py decoder

The surviving mutants of a run are listed with ``cd build/mutation/<name> && mutmut results``
and shown with ``mutmut show <mutant name>``. docs/testing.md records the scores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"
MUTMUT = Path(sys.executable).with_name("mutmut")


@dataclass(frozen=True)
class Target:
    name: str
    package: str  # the folder copied as the importable package (``captioner`` or ``service``)
    module: str  # the file mutated, relative to the repository root
    tests: tuple[str, ...]  # the test files that must kill its mutants
    deselect: str = ""  # a pytest -k expression of slow tests left out (each is named in docs/testing.md)
    # Sub-packages installed from another folder (pyproject's package-dir: service/ is
    # captioner.service): copied inside the package so the mutated copy is the one imported.
    inside: tuple[tuple[str, str], ...] = ()


JAVA_TESTS = "not meteor_through_java and not ptb_tokenizer_scores_equal"

TARGETS = (
    Target("vocab", "captioner", "captioner/vocab.py", ("tests/captioner/test_vocab.py",)),
    # The two Java-backed parity tests take ~50 s a run each; BLEU and CIDEr-D parity with
    # pycocoevalcap is also checked without Java (test_agrees_with_pycocoevalcap).
    Target("bleu", "captioner", "captioner/metrics/bleu.py", ("tests/captioner/test_metrics.py",), JAVA_TESTS),
    Target("cider", "captioner", "captioner/metrics/cider.py", ("tests/captioner/test_metrics.py",), JAVA_TESTS),
    Target("checkpoint", "captioner", "captioner/checkpoint.py", ("tests/captioner/test_checkpoint.py",)),
    Target("images", "captioner", "captioner/images.py", ("tests/captioner/test_images.py",)),
    Target("decoder", "captioner", "captioner/decoder.py", ("tests/captioner/test_decoder.py",)),
    # The search every caption goes through, against a toy step whose probabilities are known.
    Target("search", "captioner", "captioner/runtime/search.py", ("tests/runtime/test_search.py",)),
    Target(
        "admission",
        "captioner",
        "captioner/service/admission.py",
        ("tests/service/test_admission.py",),
        inside=(("service", "captioner/service"),),
    ),
    Target(
        "bootstrap",
        "captioner",
        "captioner/metrics/bootstrap.py",
        ("tests/captioner/test_bootstrap.py", "tests/captioner/test_metrics.py"),
        "bootstrap or resampled or paired",  # test_metrics.py's bootstrap tests only
    ),
    Target(
        "batcher",
        "captioner",
        "captioner/service/batcher.py",
        ("tests/service/test_batcher.py",),
        inside=(("service", "captioner/service"),),
    ),
)


def config_text(target: Target) -> str:
    tests = ", ".join(json.dumps(t) for t in target.tests)
    if target.deselect:
        tests += f', "-k", {json.dumps(target.deselect)}'
    return (
        "[tool.mutmut]\n"
        f'source_paths = ["{target.package}"]\n'
        f'only_mutate = ["{target.module}"]\n'
        f"pytest_add_cli_args_test_selection = [{tests}]\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
        'process_isolation = "forkserver"\n'
        "\n[tool.pytest.ini_options]\n"
        'addopts = "-ra"\n'
        "timeout = 300\n"
    )


def prepare(target: Target) -> Path:
    """A fresh work folder: the package, the tests and the mutmut settings."""
    work = WORK / target.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / target.package, work / target.package, ignore=ignore)
    for src, dst in target.inside:
        shutil.copytree(ROOT / src, work / dst, ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    (work / "pyproject.toml").write_text(config_text(target))
    return work


def score(work: Path) -> dict:
    """Counts from ``mutmut export-cicd-stats``."""
    subprocess.run([str(MUTMUT), "export-cicd-stats"], cwd=work, capture_output=True, check=False)
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    decided = stats["killed"] + stats["survived"] + stats.get("timeout", 0)
    stats["score"] = round(100 * stats["killed"] / decided, 1) if decided else None
    return stats


def run(target: Target, time_cap_s: float) -> dict:
    work = prepare(target)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        subprocess.run([str(MUTMUT), "run", "--max-children", "1"], cwd=work, env=env, timeout=time_cap_s, check=False)
    except subprocess.TimeoutExpired:
        print(f"{target.name}: stopped at the time cap of {time_cap_s:.0f} s (the score counts what finished)")
    return score(work)


def main(argv: list[str]) -> int:
    wanted = set(argv)
    unknown = wanted - {t.name for t in TARGETS}
    if unknown:
        print(f"unknown target(s) {sorted(unknown)}; known: {[t.name for t in TARGETS]}", file=sys.stderr)
        return 2
    cap = float(os.environ.get("MUTATION_TIME_CAP", "1200"))
    rows = []
    for target in TARGETS:
        if wanted and target.name not in wanted:
            continue
        stats = run(target, cap)
        rows.append((target, stats))
        print(json.dumps({"target": target.name, **stats}), flush=True)
    print(f"\n{'module':<28} {'killed':>6} {'survived':>8} {'timeout':>7} {'no tests':>8} {'score':>6}")
    for target, s in rows:
        shown = "-" if s["score"] is None else f"{s['score']}%"
        print(
            f"{target.module:<28} {s['killed']:>6} {s['survived']:>8} {s.get('timeout', 0):>7}"
            f" {s.get('no_tests', 0):>8} {shown:>6}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
