"""`POST /detect` on a real `leaf serve` whose LEAF_MODELS names the GGUF file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from tests.real.test_detect_real import whole_words_removed
from tests.reliability.procs import leaf_serve

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_post_detect_on_leaf_serve_with_a_gguf_model(smollm2: Path, real_student: Path,
                                                     tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAF_")}
    env.update(LEAF_DATA_DIR=str(tmp_path / "data"), LEAF_DEVICE="cpu",
               LEAF_MODELS=json.dumps({"smollm2": str(smollm2), "smollm2-2l": str(real_student)}),
               LEAF_DEFAULT_TEACHER="smollm2", LEAF_DEFAULT_STUDENT="smollm2-2l",
               LEAF_DETECT_WAIT_S="300")  # the first request waits for the models to load
    log = tmp_path / "serve.log"
    with leaf_serve(env, log=log, timeout=120) as (base, serve):
        instruction = "Tom baked 24 muffins. His sister is 13 years old. He sold 9 muffins."
        body = {"instruction": instruction, "output": "24 - 9 = 15. The answer is 15.",
                "percentile": 25}
        answer = httpx.post(f"{base}/detect", json=body, timeout=330)
        assert answer.status_code == 200, answer.text
        record = answer.json()
        again = httpx.post(f"{base}/detect", json=body, timeout=60).json()
    output = log.read_text()
    assert record["cached"] is False and again["cached"] is True
    assert all(instruction[t["start"]:t["end"]] == t["text"] for t in record["tokens"])
    words = set(instruction.replace(".", " ").split())
    assert all(t["text"] in words for t in record["tokens"] if t["confounder"])
    assert record["params"]["unit"] == "word" and record["spans"]
    assert whole_words_removed(instruction, record["collective"])
    # The service names its models; no server path reaches the client.
    assert str(smollm2.parent) not in answer.text and str(real_student) not in answer.text
    assert serve.returncode == 0, output
    assert "Traceback" not in output
