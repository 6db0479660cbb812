from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient
from redis import Redis
from starlette.applications import Starlette
from starlette.routing import Mount

from app.main import FRONTEND, create_app
from app.routing import RevalidatedFiles
from tests.service import make_settings


def test_health_counts_live_workers(client: TestClient, settings, redis_url: str) -> None:
    from tests.service import running_worker

    idle = client.get("/health").json()
    assert idle["status"] == "degraded" and idle["redis"] == "ok" and idle["workers"] == 0
    with running_worker(settings, redis_url):
        body = client.get("/health").json()
        assert body["status"] == "ok" and body["workers"] == 1
        assert set(body["queues"]) == {"leaf-short", "leaf-long"}
    assert client.get("/health").json()["workers"] == 0  # a stopped worker is not counted


def test_models_list_names_and_roles_but_no_paths(client: TestClient, settings) -> None:
    body = client.get("/models").json()
    assert body["default_teacher"] == "tiny-teacher"
    roles = {m["name"]: (m["role"], m["default_for"], m["available"]) for m in body["models"]}
    assert roles == {"tiny-teacher": ("teacher", ["teacher"], True),
                     "tiny-student": ("student", ["student"], True)}
    assert str(settings.data_dir.parent) not in client.get("/models").text
    assert "/" not in "".join(m["name"] for m in body["models"])


def test_examples_static_page_and_docs(client: TestClient) -> None:
    examples = client.get("/examples?limit=3").json()["examples"]
    assert len(examples) == 3 and all(e["instruction"] and e["output"] for e in examples)
    page = client.get("/")
    assert page.status_code == 200 and "<title>LeaF</title>" in page.text
    # Unhashed module names: a browser must revalidate (304 by ETag), never reuse stale code.
    module = client.get("/app.js")
    assert module.headers["cache-control"] == "no-cache" and page.headers["cache-control"] == (
        "no-cache")
    again = client.get("/app.js", headers={"if-none-match": module.headers["etag"]})
    assert again.status_code == 304
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/detect", "/datasets", "/jobs", "/jobs/{job_id}/files/{name}"} <= set(spec["paths"])
    assert "202" in spec["paths"]["/detect"]["post"]["responses"]
    missing = client.get("/no/such/thing")
    assert missing.status_code == 404 and missing.json()["detail"]
    # The static files never answer for an API path: a wrong method gets the route's 405.
    for method, path, allow in (("get", "/detect", "POST"), ("put", "/datasets", "GET, POST"),
                                ("post", "/jobs/0123456789abcdef0123", "DELETE, GET")):
        response = client.request(method, path)
        assert response.status_code == 405 and response.headers["allow"] == allow, path
    # No token configured: the schema declares no auth.
    assert "securitySchemes" not in spec.get("components", {})
    assert "401" not in spec["paths"]["/detect"]["post"]["responses"]


def test_api_token(tmp_path: Path, redis: Redis, redis_url: str, llama_pair) -> None:
    settings = make_settings(redis_url, tmp_path / "data", llama_pair, api_token="s3cret")
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/").status_code == 200
        for method, path in (("get", "/models"), ("get", "/jobs"), ("get", "/datasets"),
                             ("post", "/detect"), ("get", "/examples")):
            response = getattr(client, method)(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = client.get("/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "token" in wrong.json()["detail"]
        right = client.get("/models", headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200
        assert client.get("/openapi.json").status_code == 401  # unless LEAF_PUBLIC_DOCS
        spec = client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()
        assert "HTTPBearer" in spec["components"]["securitySchemes"]
        assert "401" in spec["paths"]["/detect"]["post"]["responses"]


def test_redis_down_is_503_not_500(tmp_path: Path, llama_pair) -> None:
    settings = make_settings(f"unix://{tmp_path}/nothing.sock", tmp_path / "data", llama_pair)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/health").status_code == 503
        response = client.post("/detect", json={"instruction": "a b", "output": "c"})
        assert response.status_code == 503 and "Redis" in response.json()["detail"]
        assert response.headers["retry-after"] == "5"


def test_the_api_never_imports_torch(tmp_path: Path) -> None:
    code = ("import sys\nfrom app.main import create_app\n"
            "from leaf_service.settings import Settings\n"
            f"app = create_app(Settings(redis_url='redis://127.0.0.1:1', data_dir='{tmp_path}'))\n"
            "app.openapi()\n"
            "import app.routers.detect, app.routers.jobs, workers.jobs\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_only_the_pages_files_are_served(client: TestClient, tmp_path: Path) -> None:
    assert (FRONTEND / "__init__.py").is_file()  # frontend/ is a Python package
    for path in ("/__init__.py", "/__pycache__/__init__.cpython-311.pyc", "/.gitignore",
                 "/%5f_init__.py", "/app.js/../__init__.py"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "frontend" not in response.text
    for path in ("/", "/index.html", "/app.js", "/style.css"):
        assert client.get(path).status_code == 200, path

    # The same rules over a directory holding one file of every kind.
    files = {"index.html": "<p>page</p>", "app.js": "1", "style.css": "p{}", "icon.svg": "<svg/>",
             "font.woff2": "w", "sub/deep.js": "2", "__init__.py": "SECRET",
             "__pycache__/x.cpython-311.pyc": "SECRET", ".env": "SECRET", "notes.txt": "SECRET",
             "data.json": "SECRET", "run.sh": "SECRET", "sub/.hidden.js": "SECRET",
             "_private/a.js": "SECRET", "Makefile": "SECRET"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    static = TestClient(Starlette(routes=[Mount("/", RevalidatedFiles(directory=tmp_path,
                                                                       html=True))]))
    for name, text in files.items():
        response = static.get(f"/{name}")
        if text == "SECRET":
            assert response.status_code == 404, name
        else:
            assert response.status_code == 200 and response.text == text, name
    assert static.get("/").text == "<p>page</p>"
