"""GET /models: the allow-list, without its paths."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends

from app.deps import SettingsDep, require_token
from app.schemas import COMMON_ERRORS, ModelList, ModelPublic

router = APIRouter(prefix="/models", tags=["models"], dependencies=[Depends(require_token)],
                   responses=COMMON_ERRORS)


@router.get("", response_model=ModelList)
def list_models(settings: SettingsDep) -> ModelList:
    """Models a request may name, with role hints for teacher and student pickers."""
    models = []
    for name, spec in settings.models.items():
        local = Path(spec.path).expanduser()
        is_local = local.is_absolute() or spec.path.startswith((".", "~")) or local.exists()
        # A directory with a config, or a GGUF file (whose metadata is its config).
        available = (local / "config.json").is_file() or (
            local.is_file() and local.suffix.lower() == ".gguf")
        defaults = [role for role in ("teacher", "student")
                    if getattr(settings, f"default_{role}") == name]
        role = spec.role
        if role == "any" and len(defaults) == 1:
            role = defaults[0]
        models.append(ModelPublic(
            name=name, role=role, default_for=defaults,  # type: ignore[arg-type]
            source="local" if is_local else "hub",
            available=available if is_local else True,
        ))
    return ModelList(models=models, default_teacher=settings.default_teacher,
                     default_student=settings.default_student)
