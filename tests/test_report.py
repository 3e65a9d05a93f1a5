"""The HTML report: self-contained, and it really shows its images in a browser."""

import shutil
import subprocess
from pathlib import Path

import pytest

from autovae.config import Config
from autovae.report import write_report
from autovae.training import train

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _run(tmp_path: Path, name: str, latent: str) -> Path:
    config = Config(data="digits", epochs=2, batch_size=64, hidden=32, depth=1, lr=3e-3,
                    latent=latent)
    folder = tmp_path / name
    train(config, folder, progress=False)
    return folder


def test_report_is_self_contained_and_compares_runs(tmp_path):
    a = _run(tmp_path, "mixed", "logistic/normal:2,laplace/laplace:2")
    b = _run(tmp_path, "plain", "normal/normal:4")
    page = write_report([a, b], tmp_path / "both.html").read_text()
    assert page.count("<section>") == 2
    assert "logistic/normal:2,laplace/laplace:2" in page and "normal/normal:4" in page
    assert page.count("data:image/png;base64,") == 8  # curves + 3 pictures per run
    assert "src='http" not in page and 'src="http' not in page  # nothing fetched
    assert "not evaluated yet" in page
    with pytest.raises(ValueError, match="neither a run folder"):
        write_report([tmp_path / "nothing"])


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium to render the page")
def test_report_renders_its_images_in_headless_chromium(tmp_path):
    folder = _run(tmp_path, "run", "normal/normal:3")
    page = write_report([folder])
    profile = tmp_path / "profile"
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert 'data-images-loaded="4/4"' in dom  # every embedded image decoded by the browser
    shot = tmp_path / "shot.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1000,2400", page.as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    pixels = Image.open(shot).convert("L")
    assert pixels.size == (1000, 2400)
    assert len(set(pixels.tobytes())) > 50  # drawn content, not a blank page
