"""`captioner serve` on a port already in use says so before it loads the model: with a
checkpoint that does not exist, the error is still the port (the model was never read)."""

from __future__ import annotations

import socket

from captioner.cli import main


def test_a_port_in_use_is_reported_before_the_model_is_loaded(tmp_path, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["serve", "--port", str(port), "--checkpoint", str(tmp_path / "no-such-checkpoint")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err, err
    assert "no-such-checkpoint" not in err and "loading" not in err  # nothing was loaded
