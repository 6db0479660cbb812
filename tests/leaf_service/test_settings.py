from __future__ import annotations

import pytest

from leaf_engine.errors import ConfigError
from leaf_service.settings import load_settings


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LEAF_MODELS", "{not json", "LEAF_MODELS: not valid JSON"),
        ("LEAF_MODELS", '{"a": 3}', "LEAF_MODELS"),
        ("LEAF_MODELS", '{"bad name": "/m"}', "LEAF_MODELS: model name 'bad name'"),
        ("LEAF_DEFAULT_TEACHER", "missing", "LEAF_DEFAULT_TEACHER: 'missing' is not in"),
        ("LEAF_MAX_ROWS", "0", "LEAF_MAX_ROWS"),
        ("LEAF_DETECT_WAIT_S", "soon", "LEAF_DETECT_WAIT_S"),
        ("LEAF_DEVICE", "gpu", "LEAF_DEVICE"),
        ("LEAF_DTYPE", "int4", "LEAF_DTYPE"),
        ("LEAF_REDIS_URL", "localhost:6379", "LEAF_REDIS_URL"),
        ("LEAF_PRELOAD", "perhaps", "LEAF_PRELOAD"),
        # An empty token is a mistake (compose's `${LEAF_API_TOKEN:-}`), not "no auth".
        ("LEAF_API_TOKEN", "", "LEAF_API_TOKEN: set but empty"),
        ("LEAF_API_TOKEN", "  ", "LEAF_API_TOKEN: set but empty"),
    ],
)
def test_invalid_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str,
                                            value: str, message: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match="invalid setting") as info:
        load_settings()
    assert message in str(info.value)


def test_models_accept_paths_or_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAF_MODELS", '{"t": "/models/t", "s": {"path": "org/s", '
                                      '"role": "student"}}')
    monkeypatch.setenv("LEAF_DEFAULT_TEACHER", "t")
    monkeypatch.setenv("LEAF_DEFAULT_STUDENT", "s")
    monkeypatch.delenv("LEAF_API_TOKEN", raising=False)
    settings = load_settings()
    assert settings.models["t"].path == "/models/t" and settings.models["s"].role == "student"
    assert settings.token is None


def test_model_specs_take_gguf_files_and_force_template(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAF_MODELS", '{"t": "/models/t.gguf", "s": {"path": "/models/s", '
                                      '"prompt_template": "Q: {instruction}\\nA:", '
                                      '"force_template": true}}')
    monkeypatch.setenv("LEAF_DEFAULT_TEACHER", "t")
    monkeypatch.setenv("LEAF_DEFAULT_STUDENT", "s")
    monkeypatch.delenv("LEAF_API_TOKEN", raising=False)
    settings = load_settings()
    assert settings.models["t"].path == "/models/t.gguf" and not settings.models["t"].force_template
    assert settings.models["s"].force_template
    assert settings.models["s"].prompt_template == "Q: {instruction}\nA:"
    monkeypatch.setenv("LEAF_MODELS", '{"t": {"path": "/m", "force_template": "maybe"}}')
    with pytest.raises(ConfigError, match=r"LEAF_MODELS \(models\.t\.force_template\)"):
        load_settings()
