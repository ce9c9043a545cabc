"""The comparison report as Markdown and HTML, built from one list of sections so both say the same."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

__all__ = ["Section", "format_mean_std", "write_reports"]


@dataclass(frozen=True)
class Section:
    """One report block: a heading with paragraphs, a table or an image (paths relative to the report)."""

    title: str
    paragraphs: tuple[str, ...] = ()
    table: pd.DataFrame | None = None
    images: tuple[str, ...] = ()
    level: int = 2


def format_mean_std(mean: float, std: float, digits: int = 4) -> str:
    """`mean ± std`; a missing standard deviation (one fold) prints as `mean (1 fold)`, a missing mean as `n/a`."""
    if pd.isna(mean):
        return "n/a"
    if pd.isna(std):
        return f"{mean:.{digits}f} (1 fold)"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _markdown(sections: list[Section], title: str) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += ["#" * section.level + " " + section.title, ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        if section.table is not None:
            lines += [section.table.to_markdown(index=False), ""]
        for image in section.images:
            lines += [f"![{Path(image).stem}]({image})", ""]
    return "\n".join(lines)


def _html(sections: list[Section], title: str) -> str:
    parts = [
        "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px}"
        "img{max-width:100%}</style>",
        "</head><body>", f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h{section.level}>{html.escape(section.title)}</h{section.level}>")
        parts += [f"<p>{html.escape(p)}</p>" for p in section.paragraphs]
        if section.table is not None:
            parts.append(section.table.to_html(index=False, na_rep="n/a", escape=True))
        parts += [f"<p><img src='{html.escape(image)}' alt='{html.escape(Path(image).stem)}'></p>"
                  for image in section.images]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(folder: Path, sections: list[Section], title: str) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into `folder`; return their paths."""
    markdown, page = folder / "report.md", folder / "report.html"
    markdown.write_text(_markdown(sections, title), encoding="utf-8")
    page.write_text(_html(sections, title), encoding="utf-8")
    return markdown, page
