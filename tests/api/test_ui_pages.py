"""The dashboard's server side: pages that need no key and carry a strict CSP, local assets,
and the model card route (key needed, another tenant's model a 404, HTML in a card escaped)."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from app.ui.endpoints import CARD_IMAGES, read_card
from tests.factories.api import assert_error, upload_model_dir

PAGES = ["/ui", "/ui/login", "/ui/new", "/ui/models", "/ui/jobs/job-1", "/ui/models/model-1"]
HOSTILE_CARD = """---
license: mit
---
# Card <script>alert(1)</script>

<img src=x onerror=alert(2)>

[click](javascript:alert(3)) and [docs](https://example.org/docs)

| a | b |
|---|---|
| 1 | 2 |

![curve](training_curve.png)
"""


@pytest.mark.parametrize("path", PAGES)
def test_pages_need_no_key_and_forbid_foreign_scripts(client: Any, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert 'src="/ui/static/js/' in response.text and "http" not in response.text.split("<body>")[1]


def test_an_id_in_the_path_is_escaped_in_the_page(client: Any) -> None:
    response = client.get('/ui/jobs/%3Cimg%20src%3Dx%20onerror%3D%22alert(1)%22%3E')

    assert response.status_code == 200
    assert "<img src=x" not in response.text
    assert 'data-job-id="&lt;img src=x onerror=&#34;alert(1)&#34;&gt;"' in response.text


def test_every_asset_a_page_names_is_served(client: Any) -> None:
    for asset in ["ui.css", "js/api.js", "js/chart.js", "js/jobs.js", "js/job.js", "js/model.js",
                  "js/models.js", "js/new.js", "js/login.js"]:
        assert client.get(f"/ui/static/{asset}").status_code == 200, asset
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui"


def test_model_card_is_rendered_with_html_escaped(
    client: Any, auth: dict[str, str], other_auth: dict[str, str], tiny_teacher_dir: Path,
    tmp_path: Path
) -> None:
    # Given an uploaded model whose README.md holds script, markup and a javascript: link
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_teacher_dir, model_dir)
    (model_dir / "README.md").write_text(HOSTILE_CARD)
    model_id = upload_model_dir(client, auth, model_dir)["id"]

    card = client.get(f"/ui/api/models/{model_id}/card", headers=auth)

    assert card.status_code == 200, card.text
    html = card.json()["html"]
    assert card.json()["markdown"] == HOSTILE_CARD
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert 'href="javascript' not in html
    assert 'href="https://example.org/docs"' in html and "<table>" in html
    assert '<code class="language-yaml">license: mit' in html  # front matter as a code block
    assert '<img src="training_curve.png"' in html
    assert_error(client.get(f"/ui/api/models/{model_id}/card", headers=other_auth), 404)
    assert client.get(f"/ui/api/models/{model_id}/card").status_code == 401


def test_card_images_are_only_the_curve(client: Any, auth: dict[str, str]) -> None:
    from distillation.export.curve import CURVE_FILE

    assert frozenset({CURVE_FILE}) == CARD_IMAGES
    # the bundled teacher's folder has config.json, but only card images are served from it
    response = client.get("/ui/api/models/all-minilm-l6-v2/files/config.json", headers=auth)
    assert_error(response, 404, param="name")
    assert_error(client.get("/ui/api/models/all-minilm-l6-v2/files/training_curve.png",
                            headers=auth), 404, param="name")


def test_a_non_editable_install_carries_every_page_and_asset(tmp_path: Path) -> None:
    """The Docker image installs the project with `pip install .`: a template or script left out
    of the wheel's package data would be a blank dashboard there and nowhere else."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[2]
    # A clean copy of what the image copies: a `build/` folder left by an earlier build would
    # still hold files the package data no longer names.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    for name in ("app", "worker", "distillation", "migrations"):
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    assets = {p.relative_to(root).as_posix() for p in (root / "app" / "ui").rglob("*")
              if p.is_file() and p.suffix in {".html", ".css", ".js"}}
    assert assets and assets <= packed, sorted(assets - packed)


def test_a_huge_model_card_is_read_and_rendered_only_in_part(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    # Given a model whose README.md is 50 MB (random text: an archive may not be a bomb)
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_teacher_dir, model_dir)
    noise = random.Random(0).randbytes(25 * 1024**2).hex()
    readme = "# Huge card\n\n" + "\n\n".join(noise[i:i + 78] for i in range(0, len(noise), 80))
    (model_dir / "README.md").write_text(readme)
    model_id = upload_model_dir(client, auth, model_dir)["id"]

    started = time.perf_counter()
    card = client.get(f"/ui/api/models/{model_id}/card", headers=auth)
    print(f"card of a {len(readme):,}-byte README: {time.perf_counter() - started:.2f} s, "
          f"{len(card.content):,} bytes")

    # Then the card answers with its start only, saying it was truncated
    assert card.status_code == 200, card.text
    limit = settings.card_max_bytes
    assert len(card.content) < 4 * limit  # the markdown and its HTML, both from `limit` bytes
    body = card.json()
    assert body["truncated"] is True and body["size_bytes"] == len(readme)
    assert body["markdown"].startswith("# Huge card") and "truncated" in body["markdown"]
    assert "truncated" in body["html"]


def test_a_card_cut_inside_a_character_still_reads(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_bytes("é".encode() * 10)  # two bytes each: a cut at 5 bytes splits one

    text, size = read_card(readme, limit=5)

    assert (text, size) == ("éé\N{REPLACEMENT CHARACTER}", 20)
