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


# -- chain folders of autovae invert ---------------------------------------------------------
@pytest.fixture(scope="module")
def chain_folders(tmp_path_factory):
    """Two small Darcy inversions (KL prior, 4 coefficients) with different kernels."""
    from autovae.inverse import invert

    root = tmp_path_factory.mktemp("chains")
    for kernel in ("pcn", "rwm"):
        invert(problem="darcy", prior="kle", grid=8, dim=4, chains=2, warmup=100, draws=150,
               kernel=kernel, seed=1, out=str(root / kernel))
    return root / "pcn", root / "rwm"


def _rows(page: str) -> dict[str, list[str]]:
    """The summary table's rows: figure -> its cells (one per folder, then unit, meaning)."""
    import re

    table = page[page.index("<table class=figures>"):]
    table = table[:table.index("</table>")]
    rows = {}
    for tr in re.findall(r"<tr><td>(.*?)</tr>", table):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", "<td>" + tr)
        rows[cells[0]] = cells[1:]
    return rows


def test_chain_report_answers_in_the_fields_terms(chain_folders):
    import json

    import arviz as az

    from autovae.inverse.diagnostics import load_netcdf

    a, b = chain_folders
    page = write_report([a, b], a.parent / "both.html").read_text()
    assert "NLLs of different likelihood" not in page  # no VAE sentence on a chain report
    rows = _rows(page)
    for folder, col in ((a, 0), (b, 1)):
        s = json.loads((folder / "summary.json").read_text())
        want = {"R-hat, max": f"{s['rhat_max']:.3g}", "ESS bulk, min": f"{s['ess_bulk_min']:,.0f}",
                "ESS tail, min": f"{s['ess_tail_min']:,.0f}", "PDE solves": f"{s['solves']:,}",
                "ESS per 1000 solves": f"{s['ess_per_1000_solves']:.3g}",
                "ESS per second": f"{s['ess_per_second']:.3g}",
                "error against the truth": f"{s['rel_l2_mean']:.3g}",
                "truth within 2 sd": f"{100 * s['coverage_2sd']:.0f}%",
                "NSSWR": f"{s['nsswr']:.3g}",
                "mean acceptance probability": f"{s['mean_accept_prob']:.2f}"}
        for label, value in want.items():
            assert rows[label][col] == value, (label, rows[label])
        # the ArviZ table of the parameters (log k, cell (0,0) first), as ArviZ computes it
        # from posterior.nc's parameter draws, with the truth beside it
        idata = load_netcdf(folder / "posterior.nc")
        ref = az.summary({"p": idata.posterior["params"].values}, round_to="none").iloc[0]
        table = page.split("<table class=params>")[col + 1]
        assert table.startswith("<tr><th>log k</th><th class=num>truth</th>")
        first = table.split("<tr><td>(0,0)</td>")[1].split("</tr>")[0]
        truth = float(idata.constant_data["truth"].values[0])
        assert first.startswith(f"<td class=num>{truth:.3g}</td>")
        for key in ("mean", "sd", "hdi_3%", "mcse_mean", "r_hat"):
            assert f"<td class=num>{ref[key]:.3g}</td>" in first, key
        assert f"<td class=num>{ref['ess_bulk']:,.0f}</td>" in first
        assert table.split("</table>")[0].count("<span class=worst>") == 3
    assert rows["NSSWR"][3].count("docs/inverse.md#nsswr") == 1
    # every figure has a unit and a meaning; the raw summary keys live behind the fold
    assert all(r[3] for k, r in rows.items() if k != "status")
    fold = page[page.index("<details>"):]
    assert "ssr params mean" not in page[:page.index("<details>")]
    assert "SSR of parameters, mean" in fold and "PDE solves per second" in fold
    assert page.count("data:image/png;base64,") == 2 * 4  # fields, traces, error bars, calib.


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium to render the page")
def test_chain_report_renders_aligned_and_legible_in_headless_chromium(chain_folders, tmp_path):
    a, b = chain_folders
    page = write_report([a, b], tmp_path / "chains.html")
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
              "--virtual-time-budget=5000", "--window-size=1400,3000", "--hide-scrollbars"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert 'data-images-loaded="8/8"' in dom
    assert 'data-figures-aligned="yes"' in dom  # each kind of picture on one row
    assert 'data-overflow="no"' in dom  # nothing wider than the window
    import re

    from autovae.inverse.figures import DPI, FONT

    # two runs side by side on 1400 px: the smallest text of any picture is drawn at 9 px or more
    scale = float(re.search(r'data-figure-scale="([0-9.]+)"', dom).group(1))
    smallest = min(v for k, v in FONT.items() if "size" in k) * DPI / 72
    assert scale * smallest >= 9, (scale, smallest)
    shot = tmp_path / "chains.png"
    subprocess.run([*common, f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120)
    from PIL import Image

    pixels = Image.open(shot).convert("L")
    assert pixels.size == (1400, 3000) and len(set(pixels.tobytes())) > 50


def test_a_run_chains_folder_is_reported_from_its_posterior(tmp_path):
    """A folder of run_chains (no summary.json): the figures come from posterior.nc."""

    from autovae.inverse import Target, run_chains
    from autovae.inverse.diagnostics import summary

    r = run_chains(Target(lambda z: 0.5 * (z * z).sum(-1) * 4, 2), "rwm", tmp_path / "c",
                   chains=2, warmup=50, draws=100, seed=1)
    s = summary(r)
    rows = _rows(write_report([tmp_path / "c"], tmp_path / "r.html").read_text())
    assert rows["R-hat, max"][0] == f"{s['rhat_max']:.3g}"
    assert rows["PDE solves"][0] == f"{s['solves']:,}"
