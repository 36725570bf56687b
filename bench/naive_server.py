"""The baseline for ``bench.serve``: a captioning server written the way tutorials write one.

One FastAPI endpoint; every request decodes its upload fully with Pillow, preprocesses it
and runs one eager PyTorch forward of the encoder at batch 1 and the decoder (the PyTorch
reference path, :class:`captioner.ReferenceCaptioner`), inline in the request handler. No
batching, no JPEG draft decoding, no ONNX Runtime, no thread pool.

    python -m bench.naive_server --checkpoint DIR --port 8001

It answers ``POST /v1/captions`` (multipart field ``file``, query ``beam_size``) with
``{"caption": ..., "score": ...}`` and ``GET /readyz``; the port is printed when ready.
"""

from __future__ import annotations

import argparse
import io
import socket
import sys

import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image

from captioner import ReferenceCaptioner
from captioner.options import CaptionOptions


def create_app(model: ReferenceCaptioner) -> FastAPI:
    app = FastAPI(title="naive captioning baseline")

    @app.get("/readyz")
    async def ready() -> dict:
        return {"ready": True}

    @app.post("/v1/captions")
    async def caption(file: UploadFile = File(...), beam_size: int = 1) -> dict:
        data = await file.read()
        image = Image.open(io.BytesIO(data)).convert("RGB")  # full-size decode
        x = torch.from_numpy(model.preprocessing(image))[None]  # (1, 3, 224, 224)
        with torch.no_grad():
            features = model.encoder(x)  # (1, 1280), eager PyTorch
        result = model.generate(features.numpy(), CaptionOptions(beam_size=beam_size))[0]  # on TorchStep
        return {"caption": result.caption, "score": result.score}

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.naive_server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    args = p.parse_args(argv)
    model = ReferenceCaptioner.load(args.checkpoint, device="cpu")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    print(f"naive server listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(create_app(model), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
