"""vlarl report: sections in method order, commands found, plots owned by the right result,
an HTML page with the plots inside, and clear errors."""

import json

import numpy as np
import pytest

from vlarl.errors import VlarlError


def _png(path):
    import imageio

    imageio.imwrite(path, np.full((4, 4, 3), 200, np.uint8))


def test_report_from_sample_results(tmp_path):
    from vlarl.report import write_report

    res = tmp_path / "results"
    res.mkdir()
    (res / "asap.md").write_text("# ASAP on arm/track\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (res / "asap.json").write_text(json.dumps({"command": "python benchmarks/asap_arm.py --report"}))
    (res / "rlpd_metaworld.md").write_text("# RLPD\n\n`python benchmarks/rlpd_metaworld.py --tasks reach` on 2 cores\n")
    (res / "rlpd_metaworld_pixels.md").write_text("# pixels\n")
    (res / "custom.json").write_text("{}")
    for name in ("rlpd_metaworld.png", "rlpd_metaworld_pixels.png"):
        _png(res / name)
    out = write_report(res, tmp_path / "out" / "report.md")
    assert out["sections"] == ["RLPD", "ASAP", "Other results"] and out["results"] == 4
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.index("## RLPD") < md.index("## ASAP") < md.index("## Other results")
    assert "python benchmarks/asap_arm.py --report" in md and "python benchmarks/rlpd_metaworld.py --tasks reach" in md
    assert "#### ASAP on arm/track" in md and "| 1 | 2 |" in md  # its headings nest under the section
    assert md.count("rlpd_metaworld_pixels.png") == 1 and md.count("rlpd_metaworld.png") == 1
    assert md.index("rlpd_metaworld.png") < md.index("### rlpd_metaworld_pixels")  # each plot under its owner
    assert "JSON only" in md  # custom has no Markdown
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page


def test_report_errors_are_named(tmp_path, capsys):
    from vlarl.cli import main
    from vlarl.report import write_report

    with pytest.raises(VlarlError, match="no results folder"):
        write_report(tmp_path / "missing", tmp_path / "r.md")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VlarlError, match="no .md or .json"):
        write_report(tmp_path / "empty", tmp_path / "r.md")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.json").write_text("{oops")
    assert main(["report", "--results", str(tmp_path / "bad"), "--out", str(tmp_path / "r.md")]) == 2
    assert "x.json: not valid JSON" in capsys.readouterr().err
