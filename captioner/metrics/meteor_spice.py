"""METEOR and SPICE through the Java programs that pycocoevalcap ships.

Both metrics exist only as Java programs. We run them ourselves instead of through
pycocoevalcap's wrappers because those can hang forever (blocking pipe reads, no
timeouts), write temporary files into site-packages, and SPICE's wrapper downloads
Stanford CoreNLP from the internet on first use.

* METEOR 1.5 (``pycocoevalcap/meteor/meteor-1.5.jar`` plus its bundled paraphrase table
  ``data/paraphrase-en.gz``) runs fully offline. We speak its ``-stdio`` protocol the way
  pycocoevalcap does (one ``SCORE`` line per image, then one ``EVAL`` line), so the numbers
  are coco's. Starting the JVM and loading the paraphrase table takes 5-20 s.
* SPICE 1.0 (``pycocoevalcap/spice/spice-1.0.jar``) also needs Stanford CoreNLP 3.6.0
  (``spice/lib/stanford-corenlp-3.6.0.jar`` and ``...-models.jar``), which pycocoevalcap
  does not ship. Without them SPICE is skipped with a message saying how to add them.

Anything that stops a metric from running (no Java, missing files, the JVM failing or
not answering within the timeout) raises :class:`MetricUnavailable`; the caller reports
it as a skipped metric and carries on. Every wait on a Java process has a timeout, and
the process is killed on the way out.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import queue
import re
import shutil
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path

METEOR_TIMEOUT_S = 180.0  # longest wait for any one answer from METEOR (the first includes JVM start-up)
SPICE_TIMEOUT_S = 3600.0  # whole SPICE run (CoreNLP parses every caption: minutes for 5000 images)
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


class MetricUnavailable(RuntimeError):
    """A metric cannot run here; ``str(error)`` says why and what would fix it."""


# ----------------------------------------------------------------------------- locating things


def java_executable() -> str:
    """Path of ``java``, or :class:`MetricUnavailable` if it is not on PATH."""
    java = shutil.which("java")
    if java is None:
        raise MetricUnavailable(
            "Java is not installed (no `java` on PATH); install a Java runtime "
            "(e.g. `apt-get install default-jre-headless`) to compute it"
        )
    return java


@functools.lru_cache(maxsize=4)
def java_major_version(java: str) -> int:
    """Major version of a Java runtime (8 for "1.8.0_312", 17 for "17.0.15")."""
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MetricUnavailable(f"`{java} -version` failed: {e}") from e
    m = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if proc.returncode != 0 or m is None:
        raise MetricUnavailable(f"`{java} -version` failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    major, minor = int(m.group(1)), int(m.group(2) or 0)
    return minor if major == 1 else major


def pycocoevalcap_dir() -> Path:
    """Folder of the installed pycocoevalcap package (found without importing it)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise MetricUnavailable(
            "pycocoevalcap is not installed (`pip install pycocoevalcap` ships the METEOR/SPICE jars)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def meteor_files(root: Path | None = None) -> tuple[Path, Path]:
    """(meteor-1.5.jar, paraphrase-en.gz) of pycocoevalcap, checked to exist."""
    root = Path(root) if root is not None else pycocoevalcap_dir()
    jar = root / "meteor" / "meteor-1.5.jar"
    para = root / "meteor" / "data" / "paraphrase-en.gz"
    for path in (jar, para):
        if not path.is_file() or path.stat().st_size == 0:
            raise MetricUnavailable(f"METEOR file missing: {path} (reinstall pycocoevalcap)")
    return jar, para


def spice_files(root: Path | None = None) -> Path:
    """spice-1.0.jar of pycocoevalcap, after checking the CoreNLP jars it needs are beside it."""
    root = Path(root) if root is not None else pycocoevalcap_dir()
    jar = root / "spice" / "spice-1.0.jar"
    if not jar.is_file():
        raise MetricUnavailable(f"SPICE file missing: {jar} (reinstall pycocoevalcap)")
    missing = [name for name in CORENLP_JARS if not (root / "spice" / "lib" / name).is_file()]
    if missing:
        raise MetricUnavailable(
            f"SPICE needs Stanford CoreNLP 3.6.0, which is not installed ({', '.join(missing)} missing in "
            f"{root / 'spice' / 'lib'}); on a machine with internet run "
            '`python -c "from pycocoevalcap.spice.get_stanford_models import get_stanford_models as g; g()"` '
            "once, or copy the two jars there from stanford-corenlp-full-2015-12-09.zip"
        )
    return jar


# ----------------------------------------------------------------------------- a line-based child


class LineProcess:
    """A child process spoken to one line at a time, where every read has a timeout.

    A reader thread moves stdout lines into a queue, so a silent or dead child turns into
    :class:`MetricUnavailable` after ``timeout`` seconds instead of a hang; another thread
    drains stderr (keeping its tail for error messages) so the child never blocks on it.
    """

    def __init__(self, cmd: Sequence[str], name: str, cwd: str | Path | None = None) -> None:
        self.name = name
        try:
            self.proc = subprocess.Popen(
                list(cmd), cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as e:
            raise MetricUnavailable(f"{name} could not start: {e}") from e
        self._lines: queue.Queue = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=20)
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stdout(self) -> None:
        for raw in self.proc.stdout:  # type: ignore[union-attr]
            self._lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        self._lines.put(None)  # end of output: the child exited

    def _pump_stderr(self) -> None:
        for raw in self.proc.stderr:  # type: ignore[union-attr]
            self._stderr.append(raw.decode("utf-8", "replace").rstrip())

    def _why(self) -> str:
        tail = " | ".join(line for line in self._stderr if line)[-600:]
        return f" (stderr: {tail})" if tail else ""

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write((line + "\n").encode("utf-8"))  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except OSError as e:  # BrokenPipeError when the child died
            raise MetricUnavailable(f"{self.name} stopped accepting input{self._why()}") from e

    def read(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise MetricUnavailable(f"{self.name} gave no answer within {timeout:g} s{self._why()}") from None
        if line is None:
            self._lines.put(None)
            raise MetricUnavailable(f"{self.name} exited unexpectedly (code {self.proc.poll()}){self._why()}")
        return line

    def close(self, grace: float = 5.0) -> None:
        """Close stdin, give the child ``grace`` seconds to exit, then kill it."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> LineProcess:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # after a failure the child may be stuck: do not wait for it
        self.close(grace=5.0 if exc_type is None else 0.0)


# ----------------------------------------------------------------------------- METEOR


def _meteor_field(text: str) -> str:
    """A caption made safe for METEOR's ``|||``-separated, one-line protocol."""
    return " ".join(text.replace("|||", " ").split())


def meteor(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    timeout: float = METEOR_TIMEOUT_S,
    java: str | None = None,
    root: Path | None = None,
) -> tuple[float, list[float]]:
    """METEOR 1.5 (``-l en -norm``) of captions: (corpus score, per-image scores).

    Captions are strings of space-separated tokens. The corpus score is METEOR's own
    aggregate over all images' statistics (what coco reports), not the mean of the
    per-image scores. Raises :class:`MetricUnavailable` when it cannot run.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    java = java or java_executable()
    jar, _ = meteor_files(root)
    cmd = [java, "-jar", "-Xmx2G", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]
    with LineProcess(cmd, "METEOR", cwd=jar.parent) as proc:
        stats = []
        for hyp, refs in zip(hypotheses, references):
            fields = ["SCORE", *(_meteor_field(r) for r in refs), _meteor_field(hyp)]
            proc.send(" ||| ".join(fields))
            stats.append(proc.read(timeout))
        proc.send(" ||| ".join(["EVAL", *stats]))
        try:
            per_image = [float(proc.read(timeout)) for _ in stats]
            corpus = float(proc.read(timeout))
        except ValueError as e:
            raise MetricUnavailable(f"METEOR answered something that is not a score: {e}") from e
    return corpus, per_image


# ----------------------------------------------------------------------------- SPICE


def _to_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def parse_spice_output(results: list[dict], count: int) -> tuple[float, list[float]]:
    """(corpus, per-image) SPICE F-scores from SPICE's ``-out`` JSON for images 0..count-1.

    The corpus score is the mean of the per-image "All" F-scores that are numbers;
    SPICE writes ``NaN``/null for an image with no tuples on either side, and coco would
    let one of those turn the whole mean into NaN.
    """
    by_id = {int(item["image_id"]): _to_float(item["scores"]["All"]["f"]) for item in results}
    missing = [i for i in range(count) if i not in by_id]
    if missing:
        raise MetricUnavailable(f"SPICE output lacks {len(missing)} of {count} images")
    per_image = [by_id[i] for i in range(count)]
    finite = [s for s in per_image if not math.isnan(s)]
    return (sum(finite) / len(finite) if finite else math.nan), per_image


def spice(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    timeout: float = SPICE_TIMEOUT_S,
    java: str | None = None,
    root: Path | None = None,
) -> tuple[float, list[float]]:
    """SPICE 1.0 F-score of captions: (corpus mean, per-image). :class:`MetricUnavailable` when it cannot run."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    jar = spice_files(root)
    java = java or java_executable()
    # SPICE's serialisation library reflects into java.base; Java 9+ must be told to allow it.
    opens = []
    if java_major_version(java) >= 9:
        for pkg in ("java.lang", "java.util", "java.io", "java.math", "java.net", "java.text", "java.util.concurrent"):
            opens += ["--add-opens", f"java.base/{pkg}=ALL-UNNAMED"]
    with tempfile.TemporaryDirectory(prefix="captioner-spice-") as tmp:
        in_path, out_path = Path(tmp) / "input.json", Path(tmp) / "output.json"
        data = [{"image_id": i, "test": h, "refs": list(r)} for i, (h, r) in enumerate(zip(hypotheses, references))]
        in_path.write_text(json.dumps(data), encoding="utf-8")
        cmd = [java, *opens, "-Xmx8G", "-jar", str(jar), str(in_path), "-out", str(out_path), "-subset", "-silent"]
        try:
            proc = subprocess.run(cmd, cwd=jar.parent, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise MetricUnavailable(f"SPICE did not finish within {timeout:g} s") from None
        except OSError as e:
            raise MetricUnavailable(f"SPICE could not start: {e}") from e
        if proc.returncode != 0 or not out_path.is_file():
            raise MetricUnavailable(f"SPICE failed (exit code {proc.returncode}): {proc.stderr.strip()[-600:]}")
        results = json.loads(out_path.read_text(encoding="utf-8"))
    return parse_spice_output(results, len(hypotheses))
