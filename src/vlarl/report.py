"""``vlarl report``: every benchmark's results (benchmarks/results/*.md, *.json, *.png) gathered
into one Markdown report and one self-contained HTML page, a section per method, each with
its tables, plots and the commands that reproduce it.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from vlarl.errors import VlarlError

# Report order: (section title, result file stems). Stems not listed land in "Other results".
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Environments and experts", ("env_throughput", "experts")),
    ("SFT (the Step 2 VLA)", ("sft_metaworld",)),
    ("RLPD", ("rlpd_metaworld", "rlpd_metaworld_pixels", "learner_throughput")),
    ("HIL-SERL", ("hil_serl_pick_cube",)),
    ("ConRFT", ("conrft",)),
    ("iRe-VLA", ("ire_vla",)),
    ("GRAPE", ("grape",)),
    ("RLDG", ("rldg",)),
    ("ASAP", ("asap",)),
    ("Ecosystem: LeRobot data, robot bridge, data-parallel learners, wheel", ("ecosystem",)),
    ("Security: attacks on the sockets and run directories, cost of the wire format", ("security",)),
)
_COMMAND = re.compile(r"(?:^|`)((?:python|vlarl) [^`\n]+)")


def _commands(md: str, data: dict[str, Any] | None) -> list[str]:
    """The commands a result names: its JSON's ``command`` and any ``python ...`` / ``vlarl ...``
    in code spans of its Markdown."""
    found: list[str] = []
    if data and isinstance(data.get("command"), str):
        found.append(data["command"])
    for line in md.splitlines():
        for m in _COMMAND.finditer(line):
            cmd = m.group(1).strip().rstrip(".;,")
            if cmd not in found:
                found.append(cmd)
    return found


def gather(results: Path) -> list[dict[str, Any]]:
    """One entry per section with results: title, and per result its Markdown, commands, plots."""
    if not results.is_dir():
        raise VlarlError(f"{results}: no results folder (benchmarks write theirs to benchmarks/results)")
    stems = sorted({p.stem for p in results.iterdir() if p.suffix in (".md", ".json")})
    if not stems:
        raise VlarlError(f"{results}: no .md or .json results in it")
    # A plot belongs to the longest result name it starts with (rlpd_metaworld_pixels.png is
    # rlpd_metaworld_pixels', not rlpd_metaworld's).
    plots_of: dict[str, list[Path]] = {}
    for png in sorted(results.glob("*.png")):
        owners = [s for s in stems if png.stem == s or png.stem.startswith(s + "_")]
        if owners:
            plots_of.setdefault(max(owners, key=len), []).append(png)
    listed = {s for _, group in SECTIONS for s in group}
    sections = [(title, [s for s in group if s in stems]) for title, group in SECTIONS]
    sections.append(("Other results", [s for s in stems if s not in listed]))
    out = []
    for title, group in sections:
        if not group:
            continue
        items = []
        for stem in group:
            md_path, json_path = results / f"{stem}.md", results / f"{stem}.json"
            md = md_path.read_text() if md_path.exists() else ""
            try:
                data = json.loads(json_path.read_text()) if json_path.exists() else None
            except ValueError as err:
                raise VlarlError(f"{json_path}: not valid JSON ({err})") from err
            items.append({"name": stem, "markdown": md, "json": data is not None, "commands": _commands(md, data),
                          "plots": plots_of.get(stem, [])})
        out.append({"title": title, "results": items})
    return out


def _demote(md: str) -> str:
    """Headings three levels down, so each file nests under its section (##) and result (###)."""
    return re.sub(r"^(#{1,5}) ", lambda m: "#" * min(len(m.group(1)) + 3, 6) + " ", md, flags=re.MULTILINE)


def render_markdown(sections: list[dict[str, Any]], results: Path, out_dir: Path) -> str:
    lines = ["# vlarl benchmark report", "",
             f"Every figure below is a committed result in `{results}`; each names the command that produced it.", "",
             "## Contents", ""]
    lines += [f"- [{s['title']}](#{_anchor(s['title'])}): " + ", ".join(r["name"] for r in s["results"]) for s in sections]
    for s in sections:
        lines += ["", f"## {s['title']}"]
        for r in s["results"]:
            lines += ["", f"### {r['name']}", ""]
            if r["commands"]:
                lines += ["Reproduce:", "", "```bash", *r["commands"], "```", ""]
            if r["markdown"]:
                lines.append(_demote(r["markdown"]).strip())
            elif r["json"]:
                lines.append(f"(JSON only: `{results / (r['name'] + '.json')}`)")
            for p in r["plots"]:
                rel = Path(_relpath(p, out_dir))
                lines += ["", f"![{p.stem}]({rel.as_posix()})"]
    return "\n".join(lines) + "\n"


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())


def render_html(md_text: str, out_dir: Path) -> str:
    """The Markdown as one HTML page, plots embedded (base64), so it can be sent as one file."""
    import markdown

    body = markdown.markdown(md_text, extensions=["tables", "fenced_code"])

    def embed(m: re.Match) -> str:
        src = (out_dir / html.unescape(m.group(1))).resolve()
        if not src.exists():
            return m.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(src.read_bytes()).decode()}"'

    body = re.sub(r'src="([^"]+\.png)"', embed, body)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
             "img{max-width:100%}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>vlarl benchmark report</title>" \
           f"<style>{style}</style></head><body>{body}</body></html>\n"


def write_report(results: str | Path = "benchmarks/results", out: str | Path = "report.md",
                 html_out: bool = True) -> dict[str, Any]:
    """Write the Markdown report to ``out`` (and ``out`` with .html beside it)."""
    results, out = Path(results), Path(out)
    sections = gather(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    md_text = render_markdown(sections, results, out.parent)
    out.write_text(md_text)
    written = {"markdown": str(out), "sections": [s["title"] for s in sections],
               "results": sum(len(s["results"]) for s in sections)}
    if html_out:
        html_path = out.with_suffix(".html")
        html_path.write_text(render_html(md_text, out.parent))
        written["html"] = str(html_path)
    return written
