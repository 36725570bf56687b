"""coco-caption's tokenisation: Stanford's PTB tokenizer (the jar pycocoevalcap ships)
plus coco's punctuation removal.

``pycocoevalcap.tokenizer.PTBTokenizer`` writes the captions, one per line, to a file,
runs ``java -cp stanford-corenlp-3.4.1.jar edu.stanford.nlp.process.PTBTokenizer
-preserveLines -lowerCase FILE`` and drops the tokens in :data:`PUNCTUATIONS` from each
output line. :func:`ptb_tokenize` does exactly that, with the same jar and flags, so the
tokens (and every score computed from them) are coco-caption's. What we do differently
is only the plumbing: the temporary file goes to a private temporary folder (coco
writes it beside the jar, inside site-packages), the Java run has a timeout, and the
output is checked to have one line per caption.

One deliberate difference: coco replaces only ``\\n`` inside a caption with a space. A
caption holding another line break (``\\r``, ``\\u2028``, ...) makes the Java tokenizer
emit an extra line and shifts every later caption onto the wrong image. We replace all
of them with spaces, so such a corpus gets the tokens coco meant to produce.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from captioner.metrics.meteor_spice import MetricUnavailable, java_executable, pycocoevalcap_dir

PTB_JAR = "stanford-corenlp-3.4.1.jar"
PTB_CLASS = "edu.stanford.nlp.process.PTBTokenizer"
PTB_FLAGS = ("-preserveLines", "-lowerCase")
# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS, verbatim
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
PTB_DESCRIPTION = (
    "coco-caption's: Stanford PTBTokenizer of CoreNLP 3.4.1, -preserveLines -lowerCase, punctuation removed"
)
PTB_TIMEOUT_S = 600.0  # whole run; 30,000 captions take a few seconds
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class TokenizerUnavailable(MetricUnavailable):
    """The PTB tokenizer cannot run here; ``str(error)`` says why and what would fix it."""


def ptb_jar(root: Path | None = None) -> Path:
    """pycocoevalcap's CoreNLP 3.4.1 jar, checked to exist."""
    try:
        root = Path(root) if root is not None else pycocoevalcap_dir()
    except MetricUnavailable as e:
        raise TokenizerUnavailable(str(e)) from None
    jar = root / "tokenizer" / PTB_JAR
    if not jar.is_file() or jar.stat().st_size == 0:
        raise TokenizerUnavailable(f"the PTB tokenizer jar is missing: {jar} (reinstall pycocoevalcap)")
    return jar


def ptb_unavailable_reason() -> str | None:
    """``None`` when :func:`ptb_tokenize` can run here, else why not (one short sentence)."""
    try:
        java_executable()
        ptb_jar()
    except MetricUnavailable as e:
        return str(e)
    return None


def _tokens(line: str) -> list[str]:
    """coco's ``' '.join(w for w in line.rstrip().split(' ') if w not in PUNCTUATIONS)``, as a list."""
    return " ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS).split()


def ptb_tokenize(
    texts: Sequence[str], *, timeout: float = PTB_TIMEOUT_S, java: str | None = None, root: Path | None = None
) -> list[list[str]]:
    """coco-caption's tokens of every text, in one Java run. :class:`TokenizerUnavailable` when it cannot run."""
    if not texts:
        return []
    try:
        java = java or java_executable()
    except MetricUnavailable as e:
        raise TokenizerUnavailable(str(e)) from None
    jar = ptb_jar(root)
    body = "\n".join(_LINE_BREAKS.sub(" ", t) for t in texts)
    with tempfile.TemporaryDirectory(prefix="captioner-ptb-") as tmp:
        path = Path(tmp) / "captions.txt"
        path.write_bytes(body.encode("utf-8"))
        cmd = [java, "-cp", str(jar), PTB_CLASS, *PTB_FLAGS, str(path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise TokenizerUnavailable(f"the PTB tokenizer did not finish within {timeout:g} s") from None
        except OSError as e:
            raise TokenizerUnavailable(f"the PTB tokenizer could not start: {e}") from None
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip()[-400:]
        raise TokenizerUnavailable(f"the PTB tokenizer failed (exit code {proc.returncode}): {tail}")
    lines = proc.stdout.decode("utf-8").split("\n")
    # the file ends without a newline; trailing empty captions come back as missing lines
    while len(lines) > len(texts) and lines[-1] == "":
        lines.pop()
    if len(lines) < len(texts) and all(not t.strip() for t in texts[len(lines) :]):
        lines += [""] * (len(texts) - len(lines))
    if len(lines) != len(texts):
        raise TokenizerUnavailable(f"the PTB tokenizer returned {len(lines)} lines for {len(texts)} captions")
    return [_tokens(line) for line in lines]
