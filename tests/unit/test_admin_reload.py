"""POST /admin/reload accepts only .gguf files under MODEL_DIR (OWASP: no arbitrary file read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.ops.http import ReloadRefused, model_file_under
from tests.unit.test_http import TOKEN, FakeControl, get, serve  # noqa: F401

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    (models / "good.gguf").write_bytes(b"GGUF")
    (models / "notes.txt").write_text("x")
    (tmp_path / "outside.gguf").write_bytes(b"GGUF")
    (models / "link.gguf").symlink_to(tmp_path / "outside.gguf")
    return models


def test_a_model_file_under_the_directory_is_accepted(model_dir: Path) -> None:
    real = model_dir.resolve() / "good.gguf"
    assert model_file_under(str(model_dir), "good.gguf") == real
    assert model_file_under(str(model_dir), str(model_dir / "good.gguf")) == real
    assert model_file_under(str(model_dir), "sub/../good.gguf") == real


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/etc/passwd", 403),
        ("../outside.gguf", 403),
        ("link.gguf", 403),  # a symlink out of the directory
        ("notes.txt", 400),
        ("missing.gguf", 400),
        (".", 400),
    ],
)
def test_anything_else_is_refused(model_dir: Path, path: str, status: int) -> None:
    with pytest.raises(ReloadRefused) as info:
        model_file_under(str(model_dir), path)
    assert info.value.status == status


def test_without_a_model_directory_no_path_is_accepted() -> None:
    with pytest.raises(ReloadRefused) as info:
        model_file_under(None, "/etc/passwd")
    assert info.value.status == 403


async def test_reload_of_a_system_file_is_refused_over_http(serve, model_dir: Path) -> None:  # noqa: F811
    control = FakeControl()
    for kwargs in ({}, {"model_dir": str(model_dir)}):
        base = await serve(control, admin_token=TOKEN, **kwargs)
        status, body = await get(
            f"{base}/admin/reload", "POST", headers=AUTH, json={"model_path": "/etc/passwd"}
        )
        assert status == 403, body
        assert "sha256" not in str(body)
    assert control.reloads == []  # the service was never asked


async def test_reload_of_a_model_in_the_directory_goes_through(serve, model_dir: Path) -> None:  # noqa: F811
    control = FakeControl()
    expected = str(model_file_under(str(model_dir), "good.gguf"))
    base = await serve(control, admin_token=TOKEN, model_dir=str(model_dir))
    status, _ = await get(
        f"{base}/admin/reload", "POST", headers=AUTH, json={"model_path": "good.gguf"}
    )
    assert status == 200
    assert (await get(f"{base}/admin/reload", "POST", headers=AUTH))[0] == 200
    assert control.reloads == [expected, None]
